/* steps CMD [, CMD]...: runs each command (its words up to the next ",") as a child of
 * this process, one after another, echoing it first, and stops at the first that fails
 * with its exit status. A command that does not start with "/" is an mpctl command.
 * mpctl's assoc, flags, disassoc and ps act on their parent, so under `mpctl run` this
 * exercises them on a process the agent tracks (the guest has no shell). */
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int at = 1;
    while (at < argc) {
        char *cmd[64];
        int n = 0;
        if (argv[at][0] != '/') cmd[n++] = "/bin/mpctl";
        while (at < argc && strcmp(argv[at], ",") != 0 && n < 63) cmd[n++] = argv[at++];
        cmd[n] = NULL;
        at++;
        if (n == 0) continue;
        printf("steps$");
        for (int i = 0; i < n; i++) printf(" %s", cmd[i]);
        printf("\n");
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) return 126;
        if (pid == 0) {
            execv(cmd[0], cmd);
            perror(cmd[0]);
            _exit(127);
        }
        int status = 0;
        if (waitpid(pid, &status, 0) < 0) return 126;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    return 0;
}
