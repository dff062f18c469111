/*
 * iobench: the guest-side load of `blockwitness bench disk`. Runs one pattern of
 * O_DIRECT I/O at queue depth 1 against a block device and prints one JSON line with
 * what it measured. Built static on the host and carried into the guest on a tools disk.
 *
 *   iobench DEVICE seq-read|seq-write|rand-read|rand-write BLOCK_BYTES COUNT [SEED]
 *
 * Random offsets are block-aligned, seeded (xorshift64), within the device.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	const char *dev, *mode;
	unsigned long long count, i, slots, seed = 1;
	size_t bs;
	int write_mode, random_mode, fd;
	off_t size;
	void *buf;
	double start, secs;

	if (argc < 5) {
		fprintf(stderr, "usage: iobench DEVICE MODE BLOCK_BYTES COUNT [SEED]\n");
		return 2;
	}
	dev = argv[1];
	mode = argv[2];
	bs = strtoull(argv[3], NULL, 10);
	count = strtoull(argv[4], NULL, 10);
	if (argc > 5)
		seed = strtoull(argv[5], NULL, 10);
	seed |= 1;
	if (bs == 0 || bs % 4096) {
		fprintf(stderr, "iobench: block size %zu is not a multiple of 4096\n", bs);
		return 2;
	}
	if (!strcmp(mode, "seq-read")) {
		write_mode = 0; random_mode = 0;
	} else if (!strcmp(mode, "seq-write")) {
		write_mode = 1; random_mode = 0;
	} else if (!strcmp(mode, "rand-read")) {
		write_mode = 0; random_mode = 1;
	} else if (!strcmp(mode, "rand-write")) {
		write_mode = 1; random_mode = 1;
	} else {
		fprintf(stderr, "iobench: unknown mode %s\n", mode);
		return 2;
	}
	fd = open(dev, (write_mode ? O_RDWR : O_RDONLY) | O_DIRECT);
	if (fd < 0) {
		fprintf(stderr, "iobench: %s: %s\n", dev, strerror(errno));
		return 2;
	}
	size = lseek(fd, 0, SEEK_END);
	slots = size > 0 ? (unsigned long long)size / bs : 0;
	if (!slots) {
		fprintf(stderr, "iobench: %s is smaller than one block\n", dev);
		return 2;
	}
	if (posix_memalign(&buf, 4096, bs)) {
		fprintf(stderr, "iobench: out of memory\n");
		return 2;
	}
	for (i = 0; i < bs; i++)
		((unsigned char *)buf)[i] = (unsigned char)(i ^ 0x5a);
	start = now();
	for (i = 0; i < count; i++) {
		unsigned long long slot = i % slots;
		off_t off;
		ssize_t n;

		if (random_mode) {
			seed ^= seed << 13;
			seed ^= seed >> 7;
			seed ^= seed << 17;
			slot = seed % slots;
		}
		off = (off_t)(slot * bs);
		n = write_mode ? pwrite(fd, buf, bs, off) : pread(fd, buf, bs, off);
		if (n != (ssize_t)bs) {
			fprintf(stderr, "iobench: %s at %lld: %s\n", mode, (long long)off,
				n < 0 ? strerror(errno) : "short transfer");
			return 1;
		}
	}
	secs = now() - start;
	printf("{\"mode\":\"%s\",\"block\":%zu,\"count\":%llu,\"bytes\":%llu,"
	       "\"seconds\":%.6f,\"mib_s\":%.3f,\"iops\":%.1f}\n",
	       mode, bs, count, count * bs, secs,
	       count * bs / 1048576.0 / secs, count / secs);
	return 0;
}
