/* show PATH...: prints each directory's entries sorted, one per line ("name/" for a
 * directory, "name -> target" for a link), or each file's text. The guest has no shell
 * or ls; the scripts use this to look at the /partition view. Exits 1 when a path
 * cannot be read, after saying why. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int show_dir(const char *path) {
    struct dirent **names;
    int n = scandir(path, &names, NULL, alphasort);
    if (n < 0) return -1;
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        if (strcmp(name, ".") != 0 && strcmp(name, "..") != 0) {
            char full[4096], target[4096];
            struct stat st;
            snprintf(full, sizeof full, "%s/%s", path, name);
            if (lstat(full, &st) == 0 && S_ISLNK(st.st_mode)) {
                ssize_t len = readlink(full, target, sizeof target - 1);
                target[len < 0 ? 0 : len] = 0;
                printf("%s -> %s\n", name, target);
            } else if (lstat(full, &st) == 0 && S_ISDIR(st.st_mode)) {
                printf("%s/\n", name);
            } else {
                printf("%s\n", name);
            }
        }
        free(names[i]);
    }
    free(names);
    return 0;
}

static int show_file(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) fwrite(buf, 1, (size_t)n, stdout);
    int saved = errno;
    close(fd);
    errno = saved;
    return n < 0 ? -1 : 0;
}

int main(int argc, char **argv) {
    int status = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        int rc = stat(argv[i], &st);
        if (rc == 0) rc = S_ISDIR(st.st_mode) ? show_dir(argv[i]) : show_file(argv[i]);
        if (rc != 0) {
            fprintf(stderr, "show: %s: %s\n", argv[i], strerror(errno));
            status = 1;
        }
    }
    fflush(stdout);
    return status;
}
