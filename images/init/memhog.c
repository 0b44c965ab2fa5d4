/* memhog MIB|twice|most [hold]: touches MIB mebibytes of anonymous memory a page at a
 * time (`twice`: twice the memory.max of the nearest group at or above its own cgroup
 * that has one; `most`: three quarters of it), saying how far it got every 4 MiB, then
 * exits 0 — or with `hold` keeps the memory until it is killed. The end-to-end tests use
 * it to meet a partition's memory.max. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: memhog MIB [hold]\n");
        return 2;
    }
    long mib = strtol(argv[1], NULL, 10);
    int twice = strcmp(argv[1], "twice") == 0, most = strcmp(argv[1], "most") == 0;
    if (twice || most) {
        char group[256] = {0}, path[512], max[64] = {0};
        FILE *f = fopen("/proc/self/cgroup", "r");
        if (!f || !fgets(group, sizeof group, f) || strncmp(group, "0::", 3) != 0) {
            fprintf(stderr, "memhog: no cgroup v2 group\n");
            return 2;
        }
        fclose(f);
        group[strcspn(group, "\n")] = 0;
        for (;;) {
            snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.max", group + 3);
            f = fopen(path, "r");
            int found = f && fgets(max, sizeof max, f) && max[0] >= '0' && max[0] <= '9';
            if (f) fclose(f);
            if (found) break;
            char *slash = strrchr(group + 3, '/');
            if (!slash || slash == group + 3) {
                fprintf(stderr, "memhog: no memory.max with a number above %s\n", path);
                return 2;
            }
            *slash = 0;
        }
        long limit = strtol(max, NULL, 10) >> 20;
        mib = twice ? 2 * limit : 3 * limit / 4;
        printf("memhog: %s is %ld MiB; touching %ld MiB\n", path, limit, mib);
    }
    int hold = argc > 2 && strcmp(argv[2], "hold") == 0;
    for (long i = 0; i < mib; i++) {
        char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            printf("memhog: no memory after %ld MiB\n", i);
            return 1;
        }
        for (long off = 0; off < (1 << 20); off += 4096) p[off] = 1;
        if ((i + 1) % 4 == 0) {
            printf("memhog: %ld MiB\n", i + 1);
            fflush(stdout);
        }
    }
    printf("memhog: touched %ld MiB\n", mib);
    fflush(stdout);
    while (hold) pause();
    return 0;
}
