/* The guest's /init. It mounts the pseudo file systems and then, by the kernel argument
 * mempart.init=:
 *   greet  finds the agent port by name, greets the VMM over it and does what the VMM
 *          says on it: "zone" runs the zone steps (see zone_steps), "done" powers off;
 *   agent  starts mempart-agent on the port (serving the /partition view, with its
 *          cgroup mirror when mempart.cgroups=on) and runs each line of
 *          mempart.script= (default /etc/mpctl-script; several scripts are separated
 *          by commas), echoing it;
 * and reboots (with reboot=k the VMM sees an i8042 reset and exits 0), or for greet
 * powers off through ACPI (the VMM exits 0 too). */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void say(const char *msg) {
    printf("init: %s\n", msg);
    fflush(stdout);
}

static int find_port(const char *wanted, char *dev, size_t len) {
    DIR *dir = opendir("/sys/class/virtio-ports");
    if (!dir) return -1;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.') continue;
        char path[512], name[256] = {0};
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        ssize_t n = read(fd, name, sizeof name - 1);
        close(fd);
        if (n > 0 && name[n - 1] == '\n') name[n - 1] = 0;
        if (strcmp(name, wanted) == 0) {
            snprintf(dev, len, "/dev/%s", e->d_name);
            closedir(dir);
            return 0;
        }
    }
    closedir(dir);
    return -1;
}

/* Reads one line (without its newline) from `fd` into `line`; 0 at its end. */
static int read_line(int fd, char *line, size_t len) {
    size_t got = 0;
    while (got + 1 < len) {
        ssize_t n = read(fd, line + got, 1);
        if (n <= 0) break;
        if (line[got] == '\n') break;
        got++;
    }
    line[got] = 0;
    return got > 0;
}

/* MemTotal of NUMA node `node` in kB (0 if it has none or does not exist). */
static long node_memtotal_kb(int node) {
    char path[64], key[32];
    snprintf(path, sizeof path, "/sys/devices/system/node/node%d/meminfo", node);
    snprintf(key, sizeof key, "Node %d MemTotal: %%ld kB", node);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[256];
    long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, key, &kb) == 1) break;
    fclose(f);
    return kb;
}

/* Whether a memory block above 4 GiB is online: the VMM places zones there, and the
 * test guests' RAM ends below 3 GiB. Blocks are 128 MiB, so that is block 32 or later. */
static int zone_memory_online(void) {
    DIR *dir = opendir("/sys/devices/system/memory");
    if (!dir) return 0;
    int found = 0;
    struct dirent *e;
    while (!found && (e = readdir(dir))) {
        int block;
        if (sscanf(e->d_name, "memory%d", &block) != 1 || block < 32) continue;
        char path[300], state[8] = {0};
        snprintf(path, sizeof path, "/sys/devices/system/memory/%s/online", e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        found = read(fd, state, sizeof state - 1) > 0 && state[0] == '1';
        close(fd);
    }
    closedir(dir);
    return found;
}

#define ZONE_TOUCH (48UL << 20)

/* The first zone is node 1 when the kernel has NUMA (node 0 without): waits (at most a
 * minute) until the memory the VMM asked the guest to plug is online, then a child bound
 * to that node touches 48 MiB and holds it until the VMM says "free" on the agent port. */
static void zone_steps(int port) {
    for (int i = 0; i < 600 && !zone_memory_online(); i++) usleep(100 * 1000);
    int node = access("/sys/devices/system/node/node1", F_OK) == 0 ? 1 : 0;
    printf("init: cpu0 %s node 0\n",
           access("/sys/devices/system/node/node0/cpu0", F_OK) == 0 ? "on" : "not on");
    printf("init: node%d MemTotal %ld kB\n", node, node_memtotal_kb(node));
    fflush(stdout);
    int ready[2], release[2];
    if (pipe(ready) != 0 || pipe(release) != 0) return;
    pid_t pid = fork();
    if (pid == 0) {
        unsigned long nodes = 1UL << node;
        if (node && syscall(SYS_set_mempolicy, 2 /* MPOL_BIND */, &nodes, 64) != 0) _exit(2);
        char *mem = mmap(NULL, ZONE_TOUCH, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) _exit(3);
        for (size_t off = 0; off < ZONE_TOUCH; off += 4096) mem[off] = 1;
        if (write(ready[1], "t", 1) != 1) _exit(4);
        char c;
        if (read(release[0], &c, 1) != 1) _exit(5);
        _exit(0);
    }
    char c;
    if (read(ready[0], &c, 1) != 1) {
        int status = 0;
        waitpid(pid, &status, 0);
        printf("init: the node %d child failed (status %d)\n", node, status);
        fflush(stdout);
        return;
    }
    printf("init: touched 48 MiB on node %d\n", node);
    fflush(stdout);
    char line[64];
    while (read_line(port, line, sizeof line) && strcmp(line, "free") != 0) {}
    if (write(release[1], "x", 1) != 1) say("cannot release the zone's child");
    waitpid(pid, NULL, 0);
    printf("init: freed node %d\n", node);
    fflush(stdout);
}

/* The value of kernel argument `key` (e.g. "mempart.init="), or `fallback`. */
static void param(const char *key, const char *fallback, char *out, size_t len) {
    char line[4096] = {0};
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd >= 0) {
        ssize_t n = read(fd, line, sizeof line - 1);
        if (n < 0) n = 0;
        line[n] = 0;
        close(fd);
    }
    snprintf(out, len, "%s", fallback);
    char *at = strstr(line, key);
    if (at) {
        at += strlen(key);
        size_t n = strcspn(at, " \n");
        if (n >= len) n = len - 1;
        memcpy(out, at, n);
        out[n] = 0;
    }
}

/* Runs argv, waits for it, returns its exit status. */
static int run(char *const argv[]) {
    pid_t pid = fork();
    if (pid == 0) {
        execv(argv[0], argv);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 255;
}

/* Starts mempart-agent and waits until it says it is ready (its standard output is a
 * pipe; its diagnostics go to the console). */
static int start_agent(int cgroups) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        /* The cgroup mirror stays off here: on kvm_pvm hosts guest processes crashed or
         * misbehaved with it on (see the README); mempart.cgroups=on turns it on. */
        char *with[] = {"/bin/mempart-agent", "--listen", "/run/mempart.sock", "--view", "/partition", NULL};
        char *without[] = {"/bin/mempart-agent", "--listen", "/run/mempart.sock", "--view", "/partition",
                           "--no-cgroups", NULL};
        char **argv = cgroups ? with : without;
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    char buf[256] = {0};
    size_t got = 0;
    while (got < sizeof buf - 1 && read(fds[0], buf + got, 1) == 1 && buf[got] != '\n') got++;
    buf[got] = 0;
    printf("init: %s\n", buf);
    fflush(stdout);
    return strstr(buf, "ready") ? 0 : -1;
}

/* Runs every line of `path`, one after another, split on spaces: a line starting with
 * "/" names a program, any other line is mpctl's arguments. Nothing runs in the
 * background: one guest process at a time besides the agent keeps runs on emulated
 * kernels easy to follow. */
static void run_script(const char *path) {
    FILE *script = fopen(path, "r");
    if (!script) {
        printf("init: no %s\n", path);
        fflush(stdout);
        return;
    }
    char line[512];
    while (fgets(line, sizeof line, script)) {
        line[strcspn(line, "\n")] = 0;
        if (!line[0] || line[0] == '#') continue;
        int direct = line[0] == '/';
        printf(direct ? "guest$ %s\n" : "guest$ mpctl %s\n", line);
        fflush(stdout);
        char *argv[64] = {"/bin/mpctl"};
        int argc = direct ? 0 : 1;
        for (char *tok = strtok(line, " "); tok && argc < 63; tok = strtok(NULL, " ")) argv[argc++] = tok;
        argv[argc] = NULL;
        int status = run(argv);
        if (status != 0) {
            const char *name = strrchr(argv[0], '/');
            printf("init: %s exited with %d\n", name ? name + 1 : argv[0], status);
            fflush(stdout);
        }
    }
    fclose(script);
}

/* With `noxsave` (kvm_pvm hosts) the guest kernel saves only the SSE registers when it
 * switches processes, while user code runs natively and sees AVX: glibc would pick AVX2
 * string functions whose registers another process can clobber (seen as SIGSEGV in
 * strncpy). So, once /proc is up, init re-runs itself with glibc's AVX use turned off,
 * and every process it starts inherits that. */
static void without_avx_under_noxsave(char **argv) {
    char noxsave[8];
    param("noxsave", "absent", noxsave, sizeof noxsave);
    if (strcmp(noxsave, "absent") == 0 || getenv("GLIBC_TUNABLES")) return;
    setenv("GLIBC_TUNABLES",
           "glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,"
           "-AVX_Fast_Unaligned_Load",
           1);
    execv("/init", argv);
}

int main(int argc, char **argv) {
    (void)argc;
    mount("proc", "/proc", "proc", 0, NULL);
    without_avx_under_noxsave(argv);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    say("up");
    char how[32];
    param("mempart.init=", "greet", how, sizeof how);
    if (strcmp(how, "agent") == 0) {
        if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, NULL) != 0) say("no cgroup2");
        setenv("MPCTL_SOCKET", "/run/mempart.sock", 1);
        char cg[8];
        param("mempart.cgroups=", "off", cg, sizeof cg);
        char script[128];
        param("mempart.script=", "/etc/mpctl-script", script, sizeof script);
        if (start_agent(strcmp(cg, "on") == 0) == 0) {
            /* mempart.script= may name several scripts, separated by commas. */
            char *rest = script;
            for (char *one = strtok_r(script, ",", &rest); one; one = strtok_r(NULL, ",", &rest))
                run_script(one);
        } else {
            say("the agent did not start");
        }
        say("done");
        /* A root file system on a disk keeps what was written. */
        sync();
        reboot(RB_AUTOBOOT);
        return 0;
    }
    char dev[300];
    if (find_port("org.mempart.agent.0", dev, sizeof dev) != 0) {
        say("no agent port");
        reboot(RB_AUTOBOOT);
        return 1;
    }
    printf("init: agent port %s\n", dev);
    fflush(stdout);
    int fd = open(dev, O_RDWR);
    if (fd < 0) {
        say("cannot open the agent port");
        reboot(RB_AUTOBOOT);
        return 1;
    }
    const char *hello = "hello from linux: org.mempart.agent.0\n";
    if (write(fd, hello, strlen(hello)) != (ssize_t)strlen(hello)) say("short write");
    say("greeted the host");
    char line[64];
    while (read_line(fd, line, sizeof line) && strcmp(line, "zone") == 0) zone_steps(fd);
    printf("init: host said %s\n", line);
    fflush(stdout);
    reboot(RB_POWER_OFF);
    return 0;
}
