/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * bwsnap user/kernel ABI: the control device, its ioctls and their argument
 * structures. This header is the single definition; reference-agent's
 * src/bwsnap.rs mirrors it and a test checks sizes, offsets and numbers.
 *
 * Every structure is made of naturally aligned fixed-width fields with no
 * implicit padding, so 32- and 64-bit callers see the same layout. User
 * pointers travel as __u64.
 */
#ifndef _BWSNAP_ABI_H
#define _BWSNAP_ABI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define BWSNAP_ABI_VERSION	1
#define BWSNAP_CTL_NAME		"bwsnap-ctl"	/* /dev/bwsnap-ctl */
#define BWSNAP_DEV_PREFIX	"bwsnap"	/* /dev/bwsnap<minor> */
#define BWSNAP_BLOCK_SHIFT	12
#define BWSNAP_BLOCK_SIZE	(1U << BWSNAP_BLOCK_SHIFT)
#define BWSNAP_MAX_MINORS	32
/* cow_size value meaning "use the module parameters" */
#define BWSNAP_COW_SIZE_DEFAULT	(~0ULL)

enum bwsnap_state {
	BWSNAP_STATE_NONE = 0,		/* minor not in use */
	BWSNAP_STATE_ARMED = 1,		/* COW file ready, waiting for START */
	BWSNAP_STATE_SNAPSHOT = 2,	/* point in time held, /dev/bwsnapN readable */
	BWSNAP_STATE_INCREMENTAL = 3,	/* changed-block tracking only */
};

/* BWSNAP_IOC_SETUP: start tracking nothing yet, prepare the COW file. */
struct bwsnap_setup {
	__u64 bdev_path;	/* user pointer: NUL-terminated block device path */
	__u64 cow_path;		/* user pointer: NUL-terminated COW file path,
				 * on the filesystem mounted from bdev_path */
	__u64 cow_size;		/* bytes, multiple of BWSNAP_BLOCK_SIZE, or
				 * BWSNAP_COW_SIZE_DEFAULT */
	__u32 minor;		/* snapshot device minor, < BWSNAP_MAX_MINORS */
	__u32 flags;		/* must be 0 */
};

/* BWSNAP_IOC_TO_SNAPSHOT: from INCREMENTAL, prepare a new COW file (ARMED). */
struct bwsnap_to_snapshot {
	__u64 cow_path;		/* as in bwsnap_setup */
	__u64 cow_size;		/* as in bwsnap_setup */
	__u32 minor;
	__u32 flags;		/* must be 0 */
};

/* BWSNAP_IOC_START, BWSNAP_IOC_TO_INCREMENTAL, BWSNAP_IOC_DESTROY */
struct bwsnap_minor {
	__u32 minor;
	__u32 flags;		/* must be 0 */
};

#define BWSNAP_INFO_PATH_MAX	128

/* BWSNAP_IOC_INFO */
struct bwsnap_info {
	__u32 minor;		/* in */
	__u32 state;		/* out: enum bwsnap_state */
	__s32 error;		/* out: 0, or the negative errno that failed the
				 * snapshot (-ENOSPC: COW file full) */
	__u32 abi_version;	/* out: BWSNAP_ABI_VERSION */
	__u64 seq;		/* out: snapshot instants (STARTs) so far */
	__u8 uuid[16];		/* out: random, fixed for the life of the minor */
	__u64 dev_size;		/* out: bytes of the tracked device */
	__u64 cow_size;		/* out: bytes of COW space (whole slots) */
	__u64 cow_used;		/* out: bytes of COW space holding copies */
	__u64 changed_blocks;	/* out: blocks in the period map (frozen at the
				 * last START; what an incremental must send) */
	__u64 tracking_blocks;	/* out: blocks changed since the last START */
	__u64 cow_copies;	/* out: counters since SETUP */
	__u64 cow_reads;
	__u64 live_reads;
	__u64 tracked_writes;
	__u32 cow_extents;	/* out: extents of the current COW file */
	__u32 reserved;
	char bdev_path[BWSNAP_INFO_PATH_MAX];	/* out, NUL-terminated */
};

/* BWSNAP_IOC_READ_MAP: the period map, one bit per block. */
struct bwsnap_map {
	__u32 minor;
	__u32 flags;		/* must be 0 */
	__u64 start_block;	/* in: multiple of 64 */
	__u64 nr_blocks;	/* in: blocks wanted; out: blocks copied */
	__u64 buf;		/* user pointer to DIV_ROUND_UP(nr_blocks, 64)
				 * __u64 words; bit b of word w stands for block
				 * start_block + 64 * w + b */
};

struct bwsnap_extent {
	__u64 physical;		/* byte offset on the tracked device */
	__u64 length;		/* bytes */
};

/* BWSNAP_IOC_COW_EXTENTS: where the COW file lives on the device. */
struct bwsnap_extents {
	__u32 minor;
	__u32 count;		/* in: capacity of buf; out: extents in total
				 * (may exceed the capacity: call again) */
	__u64 buf;		/* user pointer to struct bwsnap_extent[count] */
};

enum bwsnap_source {
	BWSNAP_SRC_LIVE = 1,	/* read from the live device: no COW copy */
	BWSNAP_SRC_COW = 2,	/* read from the COW copy */
	BWSNAP_SRC_ERROR = 3,	/* the read failed */
};

#define BWSNAP_TRACE_FAULT	(1U << 0)	/* a fault knob changed this read */

struct bwsnap_trace_event {
	__u64 block;		/* block of the snapshot device */
	__u32 source;		/* enum bwsnap_source */
	__u32 flags;		/* BWSNAP_TRACE_* */
};

/* BWSNAP_IOC_TRACE: drain the read-source trace, oldest first. */
struct bwsnap_trace {
	__u32 minor;
	__u32 count;		/* in: capacity of buf; out: events copied */
	__u64 buf;		/* user pointer to struct bwsnap_trace_event[count] */
	__u64 dropped;		/* out: events lost to a full ring since the
				 * previous call */
};

#define BWSNAP_IOC_MAGIC	0xbb

#define BWSNAP_IOC_SETUP	_IOW(BWSNAP_IOC_MAGIC, 1, struct bwsnap_setup)
#define BWSNAP_IOC_START	_IOW(BWSNAP_IOC_MAGIC, 2, struct bwsnap_minor)
#define BWSNAP_IOC_TO_INCREMENTAL _IOW(BWSNAP_IOC_MAGIC, 3, struct bwsnap_minor)
#define BWSNAP_IOC_TO_SNAPSHOT	_IOW(BWSNAP_IOC_MAGIC, 4, struct bwsnap_to_snapshot)
#define BWSNAP_IOC_DESTROY	_IOW(BWSNAP_IOC_MAGIC, 5, struct bwsnap_minor)
#define BWSNAP_IOC_INFO		_IOWR(BWSNAP_IOC_MAGIC, 6, struct bwsnap_info)
#define BWSNAP_IOC_READ_MAP	_IOWR(BWSNAP_IOC_MAGIC, 7, struct bwsnap_map)
#define BWSNAP_IOC_COW_EXTENTS	_IOWR(BWSNAP_IOC_MAGIC, 8, struct bwsnap_extents)
#define BWSNAP_IOC_TRACE	_IOWR(BWSNAP_IOC_MAGIC, 9, struct bwsnap_trace)

#endif /* _BWSNAP_ABI_H */
