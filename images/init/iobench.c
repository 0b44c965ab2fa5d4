/* iobench write|read DEVICE MIB, or iobench send ADDRESS PORT MIB: the guest's side of
 * scripts/bench-io. Writes or reads MIB mebibytes of DEVICE sequentially with O_DIRECT
 * (1 MiB at a time from one aligned buffer filled in user space, so the guest kernel
 * copies nothing), or sends MIB mebibytes over TCP; prints "iobench: OP start" and
 * "iobench: OP end BYTES" so the host can time the step. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (1 << 20)

static int say(const char *op, const char *what, long long bytes) {
    if (bytes >= 0) printf("iobench: %s %s %lld\n", op, what, bytes);
    else printf("iobench: %s %s\n", op, what);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: iobench write|read DEVICE MIB | iobench send ADDRESS PORT MIB\n");
        return 2;
    }
    const char *op = argv[1];
    void *buf = NULL;
    if (posix_memalign(&buf, 4096, CHUNK) != 0) return 1;
    memset(buf, 0x5a, CHUNK);
    long long done = 0;
    if (strcmp(op, "send") == 0) {
        if (argc < 5) return 2;
        long mib = strtol(argv[4], NULL, 10);
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[3]))};
        if (s < 0 || inet_pton(AF_INET, argv[2], &to.sin_addr) != 1 ||
            connect(s, (struct sockaddr *)&to, sizeof to) != 0) {
            perror("iobench: connect");
            return 1;
        }
        say(op, "start", -1);
        for (long i = 0; i < mib; i++) {
            for (size_t off = 0; off < CHUNK;) {
                ssize_t n = write(s, (char *)buf + off, CHUNK - off);
                if (n <= 0) {
                    perror("iobench: send");
                    return 1;
                }
                off += (size_t)n;
                done += n;
            }
        }
        close(s);
        return say(op, "end", done);
    }
    long mib = strtol(argv[3], NULL, 10);
    int writing = strcmp(op, "write") == 0;
    int fd = open(argv[2], (writing ? O_WRONLY : O_RDONLY) | O_DIRECT);
    if (fd < 0) {
        perror("iobench: open");
        return 1;
    }
    say(op, "start", -1);
    for (long i = 0; i < mib; i++) {
        ssize_t n = writing ? write(fd, buf, CHUNK) : read(fd, buf, CHUNK);
        if (n != CHUNK) {
            perror("iobench: short transfer");
            return 1;
        }
        done += n;
    }
    if (writing && fdatasync(fd) != 0) perror("iobench: fdatasync");
    close(fd);
    return say(op, "end", done);
}
