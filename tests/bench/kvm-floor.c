/* The bare-KVM floor that scripts/bench-boot times beside the VMMs: the fewest steps any
 * VMM takes to run a guest on this host. It creates a VM, backs 64 MiB of guest memory
 * with a memfd, runs one vCPU in real mode to its first I/O exit (an i8042 reset, as the
 * benchmark guest ends) and exits, leaving the VM's teardown to the kernel as the
 * process ends. With "irqchip" it also creates the in-kernel PIC, I/O APIC and PIT
 * (as Firecracker and QEMU do); with "split" only the in-kernel local APICs, KVM's split
 * irqchip (as mempart-vmm does, emulating the I/O APIC itself). Either comes after the
 * memory, as in mempart-vmm. With "ioeventfd" it registers one queue-notification
 * ioeventfd, as a VMM does for a virtio-mmio device.
 *
 * Usage: kvm-floor [irqchip|split] [ioeventfd] [-v]    (-v prints each step's time,
 * closing the VM fd itself to time its teardown)
 * Exit status: 0 after the reset exit, 1 on any failure (named on stderr). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEMORY_SIZE (64UL << 20)
#define CODE_ADDR 0x1000
#define I8042_COMMAND 0x64
#define TSS_ADDR 0xfffbd000
#define IOAPIC_PINS 24
#define QUEUE_NOTIFY 0xd0000050

static double ms_now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int fail(const char *what)
{
	perror(what);
	return 1;
}

int main(int argc, char **argv)
{
	/* mov al, 0xfe; out 0x64, al: the i8042's reset command. */
	static const unsigned char code[] = { 0xb0, 0xfe, 0xe6, I8042_COMMAND };
	int irqchip = 0, split = 0, ioeventfd = 0, verbose = 0;
	double t[6];

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "irqchip"))
			irqchip = 1;
		else if (!strcmp(argv[i], "split"))
			split = 1;
		else if (!strcmp(argv[i], "ioeventfd"))
			ioeventfd = 1;
		else if (!strcmp(argv[i], "-v"))
			verbose = 1;
		else {
			fprintf(stderr, "kvm-floor: unknown argument %s\n", argv[i]);
			return 1;
		}
	}

	t[0] = ms_now();
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		return fail("/dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		return fail("KVM_CREATE_VM");

	t[1] = ms_now();
	int memfd = memfd_create("kvm-floor", MFD_CLOEXEC);
	if (memfd < 0 || ftruncate(memfd, MEMORY_SIZE))
		return fail("memfd");
	unsigned char *memory = mmap(NULL, MEMORY_SIZE, PROT_READ | PROT_WRITE,
				     MAP_SHARED | MAP_NORESERVE, memfd, 0);
	if (memory == MAP_FAILED)
		return fail("mmap");
	memcpy(memory + CODE_ADDR, code, sizeof(code));
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.memory_size = MEMORY_SIZE,
		.userspace_addr = (unsigned long)memory,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region))
		return fail("KVM_SET_USER_MEMORY_REGION");
	if (irqchip) {
		struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };

		if (ioctl(vm, KVM_SET_TSS_ADDR, TSS_ADDR) || ioctl(vm, KVM_CREATE_IRQCHIP, 0) ||
		    ioctl(vm, KVM_CREATE_PIT2, &pit))
			return fail("interrupt controllers");
	}
	if (split) {
		struct kvm_enable_cap cap = { .cap = KVM_CAP_SPLIT_IRQCHIP, .args = { IOAPIC_PINS } };

		if (ioctl(vm, KVM_SET_TSS_ADDR, TSS_ADDR) || ioctl(vm, KVM_ENABLE_CAP, &cap))
			return fail("split irqchip");
	}
	if (ioeventfd) {
		struct kvm_ioeventfd notify = { .addr = QUEUE_NOTIFY, .len = 4,
						.fd = eventfd(0, EFD_CLOEXEC) };

		if (notify.fd < 0 || ioctl(vm, KVM_IOEVENTFD, &notify))
			return fail("KVM_IOEVENTFD");
	}

	t[2] = ms_now();
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (vcpu < 0 || run_size <= 0)
		return fail("KVM_CREATE_VCPU");
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		return fail("mmap kvm_run");
	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs))
		return fail("KVM_GET_SREGS");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	struct kvm_regs regs = { .rip = CODE_ADDR, .rflags = 2 };
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) || ioctl(vcpu, KVM_SET_REGS, &regs))
		return fail("vCPU registers");

	t[3] = ms_now();
	if (ioctl(vcpu, KVM_RUN, 0))
		return fail("KVM_RUN");
	if (run->exit_reason != KVM_EXIT_IO || run->io.port != I8042_COMMAND) {
		fprintf(stderr, "kvm-floor: unexpected exit %u\n", run->exit_reason);
		return 1;
	}
	printf("kvm-floor: reset\n");

	t[4] = ms_now();
	if (verbose) {
		munmap(run, run_size);
		close(vcpu);
		close(vm);
	}
	t[5] = ms_now();
	if (verbose)
		fprintf(stderr,
			"kvm-floor: VM %.2f ms, memory%s %.2f ms, vCPU %.2f ms, run %.2f ms, "
			"teardown %.2f ms\n",
			t[1] - t[0], irqchip || split ? " and interrupt controllers" : "", t[2] - t[1],
			t[3] - t[2], t[4] - t[3], t[5] - t[4]);
	return 0;
}
