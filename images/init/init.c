/* The guest's /init for the device test: mounts the pseudo file systems, finds the
 * agent port by name, greets the host over it, waits for the host's "done" and reboots
 * (with reboot=k the VMM sees an i8042 reset and exits 0). */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
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

int main(void) {
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    say("up");
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
    char buf[64] = {0};
    size_t got = 0;
    while (got < 5) {
        ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    printf("init: host said %s", buf);
    fflush(stdout);
    reboot(RB_AUTOBOOT);
    return 0;
}
