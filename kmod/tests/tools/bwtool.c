// SPDX-License-Identifier: GPL-2.0
/*
 * bwtool: small helpers for the bwsnap guest tests (built static, run under
 * busybox).
 *
 *   bwtool cmp A B [EXTENTS]   print the 4 KiB blocks where A and B differ,
 *                              except those overlapping an extent listed in
 *                              the file EXTENTS ("physical length" per line,
 *                              bytes: the output of `bwsnap-ctl extents`);
 *                              last line "differ N"
 *   bwtool blocks FILE         print the device blocks (4 KiB) lying wholly
 *                              inside FILE's extents (FS_IOC_FIEMAP)
 *   bwtool phys FILE OFF LEN   print the device blocks that bytes
 *                              [OFF, OFF + LEN) of FILE lie in
 *   bwtool badptr              call every bwsnap ioctl with bad user
 *                              pointers; every call must fail with EFAULT
 *                              (or EINVAL/ENOENT where the pointer is never
 *                              read); exit 1 otherwise
 *   bwtool readall DEV         read DEV to the end in 1 MiB O_DIRECT reads;
 *                              print "read N errors E"
 *   bwtool wbench FILE rand4k|seq1m SECONDS [BYTES]
 *                              O_DIRECT overwrites inside the existing FILE
 *                              (random 4 KiB or sequential 1 MiB from the
 *                              start, wrapping) for SECONDS or until BYTES are
 *                              written; print "MODE MiB/s N writes p50 US
 *                              p99 US" (write latencies, microseconds)
 *   bwtool hash DEV            read DEV to the end (1 MiB O_DIRECT reads) and
 *                              print one 16-hex-digit hash per 4 KiB block,
 *                              then "blocks N"; exit 1 on a read error. The
 *                              hash (FNV-1a over little-endian 64-bit words)
 *                              is mirrored by the harness's kmod tests.
 *   bwtool dm create NAME TABLE [suspended]
 *                              create a device-mapper device with one target
 *                              ("START LEN TYPE PARAMS", sectors), resume it
 *                              unless "suspended"; print "dm-MINOR"
 *   bwtool dm suspend|resume|remove NAME
 *   bwtool dm status NAME      print the target's status line
 *                              (dmsetup is not in busybox: these talk to
 *                              /dev/mapper/control directly)
 *   bwtool extents FILE        print FILE's extents as bwsnap-ctl extents
 *                              does ("physical length" in bytes, physically
 *                              adjacent ones merged)
 *   bwtool extents-attack DEV COW SIZE
 *                              SETUP minor 0 of DEV with the COW file COW of
 *                              SIZE bytes while a second thread waits for the
 *                              module's fault_delay_extents_ms pause, finds
 *                              the mapping the module made in this process
 *                              for the extent report and points every extent
 *                              at byte 0 of the device; prints "rewrote N
 *                              extents" and "setup: ok" or "setup: errno N"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../bwsnap_abi.h"

#define BLK 4096
#define CHUNK (1 << 20)

struct ext {
	uint64_t start, end;	/* blocks, [start, end) */
};

static int open_or_die(const char *path, int flags)
{
	int fd = open(path, flags);

	if (fd < 0) {
		fprintf(stderr, "bwtool: open %s: %s\n", path, strerror(errno));
		exit(2);
	}
	return fd;
}

static ssize_t read_full(int fd, char *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, buf + got, len - got);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			break;
		got += n;
	}
	return got;
}

static int cmd_cmp(int argc, char **argv)
{
	struct ext ex[4096];
	int nex = 0, fa, fb;
	uint64_t block = 0, differ = 0;
	char *a, *b;

	if (argc >= 3) {
		FILE *f = fopen(argv[2], "r");
		unsigned long long p, l;

		if (!f) {
			perror(argv[2]);
			return 2;
		}
		while (nex < 4096 && fscanf(f, "%llu %llu", &p, &l) == 2) {
			ex[nex].start = p / BLK;
			ex[nex].end = (p + l + BLK - 1) / BLK;
			nex++;
		}
		fclose(f);
	}
	fa = open_or_die(argv[0], O_RDONLY);
	fb = open_or_die(argv[1], O_RDONLY);
	a = malloc(CHUNK);
	b = malloc(CHUNK);
	for (;;) {
		ssize_t na = read_full(fa, a, CHUNK);
		ssize_t nb = read_full(fb, b, CHUNK);
		ssize_t n = na < nb ? na : nb;
		ssize_t off;

		if (na < 0 || nb < 0) {
			fprintf(stderr, "bwtool: read error at block %llu: %s\n",
				(unsigned long long)block, strerror(errno));
			return 2;
		}
		for (off = 0; off < n; off += BLK, block++) {
			size_t len = n - off < BLK ? n - off : BLK;
			int i, skip = 0;

			if (!memcmp(a + off, b + off, len))
				continue;
			for (i = 0; i < nex; i++)
				if (block >= ex[i].start && block < ex[i].end)
					skip = 1;
			if (skip)
				continue;
			printf("%llu\n", (unsigned long long)block);
			differ++;
		}
		if (n < CHUNK)
			break;
	}
	printf("differ %llu\n", (unsigned long long)differ);
	return 0;
}

static struct fiemap *get_fiemap(const char *path)
{
	size_t sz = sizeof(struct fiemap) + 4096 * sizeof(struct fiemap_extent);
	struct fiemap *fm = calloc(1, sz);
	int fd = open_or_die(path, O_RDONLY);

	fm->fm_length = ~0ULL;
	fm->fm_flags = FIEMAP_FLAG_SYNC;
	fm->fm_extent_count = 4096;
	if (ioctl(fd, FS_IOC_FIEMAP, fm)) {
		perror("FS_IOC_FIEMAP");
		exit(2);
	}
	close(fd);
	return fm;
}

/* Device blocks lying wholly inside FILE's extents, ascending by extent. */
static int cmd_blocks(const char *path)
{
	struct fiemap *fm = get_fiemap(path);
	unsigned int i;

	for (i = 0; i < fm->fm_mapped_extents; i++) {
		struct fiemap_extent *e = &fm->fm_extents[i];
		uint64_t b;

		for (b = (e->fe_physical + BLK - 1) / BLK;
		     b < (e->fe_physical + e->fe_length) / BLK; b++)
			printf("%llu\n", (unsigned long long)b);
	}
	return 0;
}

/* Device blocks that bytes [off, off + len) of FILE lie in. */
static int cmd_phys(const char *path, uint64_t off, uint64_t len)
{
	struct fiemap *fm = get_fiemap(path);
	uint64_t pos, last = ~0ULL;
	unsigned int i;

	for (pos = off; pos < off + len; pos += 512) {
		for (i = 0; i < fm->fm_mapped_extents; i++) {
			struct fiemap_extent *e = &fm->fm_extents[i];

			if (pos >= e->fe_logical &&
			    pos < e->fe_logical + e->fe_length) {
				uint64_t b = (e->fe_physical + pos -
					      e->fe_logical) / BLK;

				if (b != last)
					printf("%llu\n", (unsigned long long)b);
				last = b;
				break;
			}
		}
		if (i == fm->fm_mapped_extents) {
			fprintf(stderr, "bwtool: offset %llu not mapped\n",
				(unsigned long long)pos);
			return 2;
		}
	}
	return 0;
}

static int expect(const char *what, int rc, int want1, int want2)
{
	int e = errno;

	if (rc == 0 || (e != want1 && e != want2)) {
		printf("badptr %s: rc=%d errno=%d (%s), want %d or %d\n", what,
		       rc, rc ? e : 0, rc ? strerror(e) : "-", want1, want2);
		return 1;
	}
	printf("badptr %s: %s ok\n", what, strerror(e));
	return 0;
}

static int cmd_badptr(void)
{
	int fd = open_or_die("/dev/" BWSNAP_CTL_NAME, O_RDWR);
	void *bad = (void *)16;				/* unmapped */
	void *kern = (void *)0xffffffff81000000ULL;	/* kernel text */
	void *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS,
			-1, 0);
	struct bwsnap_setup s = { 0 };
	struct bwsnap_to_snapshot ts = { 0 };
	struct bwsnap_map m = { 0 };
	struct bwsnap_extents ex = { 0 };
	struct bwsnap_trace t = { 0 };
	int fails = 0;
	unsigned int cmds[] = { BWSNAP_IOC_SETUP, BWSNAP_IOC_START,
		BWSNAP_IOC_TO_INCREMENTAL, BWSNAP_IOC_TO_SNAPSHOT,
		BWSNAP_IOC_DESTROY, BWSNAP_IOC_INFO, BWSNAP_IOC_READ_MAP,
		BWSNAP_IOC_COW_EXTENTS, BWSNAP_IOC_TRACE };
	unsigned int i;
	char name[64];

	/* The argument structure itself unreadable. */
	for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		snprintf(name, sizeof(name), "cmd%u-null", i + 1);
		fails += expect(name, ioctl(fd, cmds[i], NULL), EFAULT, EFAULT);
		snprintf(name, sizeof(name), "cmd%u-unmapped", i + 1);
		fails += expect(name, ioctl(fd, cmds[i], bad), EFAULT, EFAULT);
		snprintf(name, sizeof(name), "cmd%u-kernel", i + 1);
		fails += expect(name, ioctl(fd, cmds[i], kern), EFAULT, EFAULT);
	}
	/* INFO writes back: a read-only mapping must fail cleanly. */
	fails += expect("info-readonly", ioctl(fd, BWSNAP_IOC_INFO, ro),
			EFAULT, EFAULT);
	/* Paths behind bad pointers. */
	s.bdev_path = (uintptr_t)bad;
	s.cow_path = (uintptr_t)"/mnt/x";
	fails += expect("setup-bdev-path", ioctl(fd, BWSNAP_IOC_SETUP, &s),
			EFAULT, EFAULT);
	s.bdev_path = (uintptr_t)"/dev/vdb";
	s.cow_path = (uintptr_t)kern;
	fails += expect("setup-cow-path", ioctl(fd, BWSNAP_IOC_SETUP, &s),
			EFAULT, EFAULT);
	ts.cow_path = (uintptr_t)bad;
	fails += expect("to-snapshot-path",
			ioctl(fd, BWSNAP_IOC_TO_SNAPSHOT, &ts), EFAULT, EFAULT);
	/*
	 * Buffers behind bad pointers on minor 0: EFAULT when it exists in a
	 * state with data, ENOENT when it does not.
	 */
	m.nr_blocks = 1 << 20;
	m.buf = (uintptr_t)bad;
	fails += expect("read-map-buf", ioctl(fd, BWSNAP_IOC_READ_MAP, &m),
			EFAULT, ENOENT);
	m.buf = (uintptr_t)ro;
	fails += expect("read-map-ro", ioctl(fd, BWSNAP_IOC_READ_MAP, &m),
			EFAULT, ENOENT);
	ex.count = 16;
	ex.buf = (uintptr_t)kern;
	ioctl(fd, BWSNAP_IOC_COW_EXTENTS, &ex);
	printf("badptr cow-extents-buf: errno %d (no crash)\n", errno);
	t.count = 1024;
	t.buf = (uintptr_t)bad;
	ioctl(fd, BWSNAP_IOC_TRACE, &t);
	printf("badptr trace-buf: errno %d (no crash)\n", errno);
	printf("badptr failures %d\n", fails);
	return fails ? 1 : 0;
}

static int cmd_readall(const char *path)
{
	int fd = open_or_die(path, O_RDONLY | O_DIRECT);
	char *buf;
	uint64_t total = 0, errors = 0;
	off_t off = 0;

	if (posix_memalign((void **)&buf, 4096, CHUNK))
		return 2;
	for (;;) {
		ssize_t n = pread(fd, buf, CHUNK, off);

		if (n < 0) {
			errors++;
			off += CHUNK;
			if (errors > 1000000)
				break;
			/* past the end pread returns 0, not an error */
			continue;
		}
		if (n == 0)
			break;
		total += n;
		off += n;
	}
	printf("read %llu errors %llu\n", (unsigned long long)total,
	       (unsigned long long)errors);
	return 0;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static int cmd_wbench(const char *path, const char *mode, double secs,
		      uint64_t max_bytes)
{
	int fd = open_or_die(path, O_WRONLY | O_DIRECT);
	int rnd = !strcmp(mode, "rand4k");
	size_t bs = rnd ? 4096 : CHUNK, cap = 4096;
	uint64_t n = 0, x = 88172645463325252ULL, off = 0, size, next = 0;
	double t0, t, w0, *lat = malloc(cap * sizeof(*lat));
	struct stat st;
	char *buf;

	if (!lat || fstat(fd, &st) || st.st_size < (off_t)CHUNK)
		return 2;
	size = st.st_size / bs * bs;
	if (posix_memalign((void **)&buf, 4096, bs))
		return 2;
	memset(buf, 0x5a, bs);
	t0 = now();
	do {
		if (rnd) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			off = x % (size / bs) * bs;
		} else {
			off = next;
			next = (next + bs) % size;
		}
		buf[0] = (char)n;
		w0 = now();
		if (pwrite(fd, buf, bs, off) != (ssize_t)bs) {
			perror("pwrite");
			return 2;
		}
		t = now();
		if (n == cap) {
			cap *= 2;
			lat = realloc(lat, cap * sizeof(*lat));
			if (!lat)
				return 2;
		}
		lat[n++] = (t - w0) * 1e6;
		t -= t0;
	} while (t < secs && (!max_bytes || n * bs < max_bytes));
	qsort(lat, n, sizeof(*lat), cmp_double);
	printf("%s %.2f MiB/s %llu writes p50 %.0f us p99 %.0f us\n", mode,
	       n * bs / t / (1 << 20), (unsigned long long)n, lat[n / 2],
	       lat[n * 99 / 100]);
	return 0;
}

/* FNV-1a over little-endian 64-bit words: fast under TCG; a change in any one
 * word always changes the hash (each step is a bijection of the state). */
static uint64_t hash_block(const unsigned char *p)
{
	uint64_t h = 0xcbf29ce484222325ULL, w;
	int i;

	for (i = 0; i < BLK; i += 8) {
		memcpy(&w, p + i, 8);
		h = (h ^ w) * 0x100000001b3ULL;
	}
	return h;
}

static int cmd_hash(const char *path)
{
	int fd = open_or_die(path, O_RDONLY | O_DIRECT);
	unsigned char *buf;
	uint64_t blocks = 0;
	off_t off = 0;

	if (posix_memalign((void **)&buf, 4096, CHUNK))
		return 2;
	for (;;) {
		ssize_t n = pread(fd, buf, CHUNK, off), i;

		if (n < 0) {
			fprintf(stderr, "bwtool: read %s at %lld: %s\n", path,
				(long long)off, strerror(errno));
			printf("error at block %llu\n",
			       (unsigned long long)(off / BLK));
			return 1;
		}
		if (n == 0)
			break;
		for (i = 0; i + BLK <= n; i += BLK, blocks++)
			printf("%016llx\n",
			       (unsigned long long)hash_block(buf + i));
		off += n;
		if (n % BLK)
			break;
	}
	printf("blocks %llu\n", (unsigned long long)blocks);
	return 0;
}

/* FILE's extents, physically adjacent ones merged, as "physical length". */
static int cmd_extents(const char *path)
{
	struct fiemap *fm = get_fiemap(path);
	uint64_t phys = 0, len = 0;
	unsigned int i;

	for (i = 0; i < fm->fm_mapped_extents; i++) {
		struct fiemap_extent *e = &fm->fm_extents[i];

		if (len && phys + len == e->fe_physical) {
			len += e->fe_length;
			continue;
		}
		if (len)
			printf("%llu %llu\n", (unsigned long long)phys,
			       (unsigned long long)len);
		phys = e->fe_physical;
		len = e->fe_length;
	}
	if (len)
		printf("%llu %llu\n", (unsigned long long)phys,
		       (unsigned long long)len);
	return 0;
}

/* ---- extents-attack ---- */

#define MAPS_BUF (1 << 16)
static char maps_before[MAPS_BUF], maps_now[MAPS_BUF];
static int attack_rewrote = -1;

/* /proc/self/maps into @buf, without malloc (a new arena would be a mapping). */
static void read_maps(char *buf)
{
	int fd = open("/proc/self/maps", O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read_full(fd, buf, MAPS_BUF - 1);

	buf[n > 0 ? n : 0] = '\0';
	if (fd >= 0)
		close(fd);
}

static int fault_fired(const char *kind)
{
	static char log[4096];
	int fd = open("/sys/kernel/debug/bwsnap/faults", O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read_full(fd, log, sizeof(log) - 1);

	if (fd >= 0)
		close(fd);
	log[n > 0 ? n : 0] = '\0';
	return strstr(log, kind) != NULL;
}

static void *attack(void *arg)
{
	int i, tries;

	(void)arg;
	/* The pause begins once the filesystem has written the extents. */
	for (tries = 0; tries < 3000 && !fault_fired("delay-extents"); tries++)
		usleep(10000);
	read_maps(maps_now);
	for (char *line = strtok(maps_now, "\n"); line; line = strtok(NULL, "\n")) {
		unsigned long lo, hi;
		char perms[8];
		int name = 0;
		struct fiemap_extent *fe;

		if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &lo, &hi,
			   perms, &name) < 3 || strcmp(perms, "rw-p"))
			continue;
		if (name && line[name])		/* file-backed, [stack], [heap] */
			continue;
		if (strstr(maps_before, line) || hi - lo > (1 << 20))
			continue;
		/* A new anonymous mapping: the module's extent buffer. */
		fe = (struct fiemap_extent *)lo;
		for (i = 0; (unsigned long)(fe + i + 1) <= hi &&
		     fe[i].fe_length; i++)
			fe[i].fe_physical = 0;
		if (i) {
			attack_rewrote = i;
			break;
		}
	}
	/* Let the module go on. */
	i = open("/sys/module/bwsnap/parameters/fault_delay_extents_ms", O_WRONLY);
	if (i >= 0) {
		if (write(i, "0", 1) != 1)
			perror("release the pause");
		close(i);
	}
	return NULL;
}

static int cmd_extents_attack(const char *dev, const char *cow, uint64_t size)
{
	int fd = open_or_die("/dev/" BWSNAP_CTL_NAME, O_RDWR);
	struct bwsnap_setup s = {
		.bdev_path = (uintptr_t)dev,
		.cow_path = (uintptr_t)cow,
		.cow_size = size,
		.minor = 0,
	};
	pthread_t t;
	int rc;

	if (pthread_create(&t, NULL, attack, NULL))
		return 2;
	/* After the attacker's stack exists: only the module's mapping is new. */
	usleep(100000);
	read_maps(maps_before);
	rc = ioctl(fd, BWSNAP_IOC_SETUP, &s);
	if (rc)
		rc = errno;
	pthread_join(t, NULL);
	printf("rewrote %d extents\n", attack_rewrote < 0 ? 0 : attack_rewrote);
	if (rc)
		printf("setup: errno %d (%s)\n", rc, strerror(rc));
	else
		printf("setup: ok\n");
	return 0;
}

/* ---- device-mapper, without dmsetup ---- */

#define DM_BUF 16384

static struct dm_ioctl *dm_new(const char *name, uint32_t flags)
{
	struct dm_ioctl *io = calloc(1, DM_BUF);

	io->version[0] = DM_VERSION_MAJOR;	/* minor 0: any 4.x kernel */
	io->data_size = DM_BUF;
	io->data_start = sizeof(*io);
	io->flags = flags;
	snprintf(io->name, sizeof(io->name), "%s", name);
	return io;
}

static int dm_call(unsigned long cmd, struct dm_ioctl *io, const char *what)
{
	static int ctl = -1;

	if (ctl < 0)
		ctl = open_or_die("/dev/mapper/control", O_RDWR);
	if (ioctl(ctl, cmd, io)) {
		fprintf(stderr, "bwtool: dm %s %s: %s\n", what, io->name,
			strerror(errno));
		return 1;
	}
	return 0;
}

/* "START LEN TYPE PARAMS" into one target spec after the header. */
static int dm_load(const char *name, const char *table)
{
	struct dm_ioctl *io = dm_new(name, 0);
	struct dm_target_spec *t = (void *)((char *)io + io->data_start);
	unsigned long long start, len;
	char type[DM_MAX_TYPE_NAME];
	int used = 0;
	size_t room;

	if (sscanf(table, "%llu %llu %15s %n", &start, &len, type, &used) < 3 ||
	    !used) {
		fprintf(stderr, "bwtool: bad table \"%s\"\n", table);
		return 2;
	}
	room = DM_BUF - io->data_start - sizeof(*t);
	if (strlen(table + used) >= room)
		return 2;
	t->sector_start = start;
	t->length = len;
	snprintf(t->target_type, sizeof(t->target_type), "%s", type);
	strcpy((char *)(t + 1), table + used);
	t->next = 0;
	io->target_count = 1;
	return dm_call(DM_TABLE_LOAD, io, "load");
}

static int cmd_dm(int argc, char **argv)
{
	const char *op = argv[0], *name = argv[1];
	struct dm_ioctl *io;

	if (!strcmp(op, "create") && (argc == 3 || argc == 4)) {
		int rc;

		io = dm_new(name, 0);
		if (dm_call(DM_DEV_CREATE, io, "create"))
			return 1;
		rc = dm_load(name, argv[2]);
		if (!rc && argc == 3)
			rc = dm_call(DM_DEV_SUSPEND, dm_new(name, 0), "resume");
		if (rc) {
			dm_call(DM_DEV_REMOVE, dm_new(name, 0), "remove");
			return 1;
		}
		/* huge_encode_dev(): minor bits 0-7 and 20-31 */
		printf("dm-%llu\n", (unsigned long long)((io->dev & 0xff) |
							  ((io->dev >> 12) & 0xfff00)));
		return 0;
	}
	if (argc != 2)
		return 2;
	if (!strcmp(op, "suspend"))
		return dm_call(DM_DEV_SUSPEND, dm_new(name, DM_SUSPEND_FLAG),
			       "suspend");
	if (!strcmp(op, "resume"))
		return dm_call(DM_DEV_SUSPEND, dm_new(name, 0), "resume");
	if (!strcmp(op, "remove"))
		return dm_call(DM_DEV_REMOVE, dm_new(name, 0), "remove");
	if (!strcmp(op, "status")) {
		struct dm_target_spec *t;

		io = dm_new(name, 0);
		if (dm_call(DM_TABLE_STATUS, io, "status"))
			return 1;
		if (io->target_count < 1 || (io->flags & DM_BUFFER_FULL_FLAG))
			return 1;
		t = (void *)((char *)io + io->data_start);
		printf("%s %s\n", t->target_type, (char *)(t + 1));
		return 0;
	}
	return 2;
}

int main(int argc, char **argv)
{
	if ((argc == 5 || argc == 6) && !strcmp(argv[1], "wbench"))
		return cmd_wbench(argv[2], argv[3], atof(argv[4]),
				  argc == 6 ? strtoull(argv[5], NULL, 0) : 0);
	if (argc >= 4 && !strcmp(argv[1], "cmp"))
		return cmd_cmp(argc - 2, argv + 2);
	if (argc == 3 && !strcmp(argv[1], "blocks"))
		return cmd_blocks(argv[2]);
	if (argc == 2 && !strcmp(argv[1], "badptr"))
		return cmd_badptr();
	if (argc == 3 && !strcmp(argv[1], "hash"))
		return cmd_hash(argv[2]);
	if (argc >= 4 && !strcmp(argv[1], "dm"))
		return cmd_dm(argc - 2, argv + 2);
	if (argc == 3 && !strcmp(argv[1], "extents"))
		return cmd_extents(argv[2]);
	if (argc == 5 && !strcmp(argv[1], "extents-attack"))
		return cmd_extents_attack(argv[2], argv[3],
					  strtoull(argv[4], NULL, 0));
	if (argc == 3 && !strcmp(argv[1], "readall"))
		return cmd_readall(argv[2]);
	if (argc == 5 && !strcmp(argv[1], "phys"))
		return cmd_phys(argv[2], strtoull(argv[3], NULL, 0),
				strtoull(argv[4], NULL, 0));
	fprintf(stderr, "usage: bwtool cmp A B [EXTENTS] | blocks FILE | phys FILE OFF LEN | badptr | readall DEV | hash DEV | wbench FILE MODE SECS [BYTES] | dm OP NAME [TABLE] | extents FILE | extents-attack DEV COW SIZE\n");
	return 2;
}
