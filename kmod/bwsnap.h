/* SPDX-License-Identifier: GPL-2.0 */
/*
 * bwsnap internals: the tracked device, the COW store interface and the
 * entry points each part of the module offers the others.
 *
 * Parts (one file each):
 *   main.c     module init/exit, parameters, /dev/bwsnap-ctl, ioctl decoding
 *   ctl.c      the state machine: setup, start, transitions, destroy, info
 *   hook.c     the ftrace hook on submit_bio_noacct and the tracked-bdev table
 *   io.c       the I/O path: write interception, the per-device worker that
 *              copies blocks and serves the snapshot device, the gendisk
 *   cowfile.c  the COW store: the preallocated file, its extents, slots, index
 *   fault.c    fault knobs and the debugfs log of their firings
 *   trace.c    the read-source trace ring
 *
 * Lock order (outermost first):
 *   bwsnap_ctl_mutex  >  dev->lock  >  dev->trace.lock, bwsnap fault log lock
 * dev->lock is taken with interrupts disabled (the hook may run in any
 * context that can submit a bio). Nothing sleeps under dev->lock.
 */
#ifndef _BWSNAP_H
#define _BWSNAP_H

#include <linux/types.h>
#include <linux/atomic.h>
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/uuid.h>
#include <linux/wait.h>

#include "bwsnap_abi.h"
#include "compat.h"

#define BWSNAP_SECTORS_PER_BLOCK	(BWSNAP_BLOCK_SIZE >> SECTOR_SHIFT)
/* Blocks one worker step reads or writes at once (bounce pages per device). */
#define BWSNAP_RUN_BLOCKS		64
/* Read-source trace ring capacity (events); a power of two. */
#define BWSNAP_TRACE_EVENTS		65536

/* ---- module parameters (main.c) ---- */
extern unsigned int bwsnap_cow_size_pct;
extern unsigned long bwsnap_cow_size_max_mb;
extern unsigned int bwsnap_fault_cow_read_live;
extern unsigned int bwsnap_fault_drop_tracking;
extern unsigned int bwsnap_fault_corrupt_cow;
extern unsigned int bwsnap_fault_delay_cow_ms;
extern unsigned int bwsnap_fault_delay_read_ms;
extern unsigned int bwsnap_fault_delay_start_ms;
extern unsigned int bwsnap_fault_delay_extents_ms;

extern int bwsnap_major;

/* ---- COW store (cowfile.c), seen by the I/O path only through ops ---- */

/* One physically contiguous piece of the COW file, in device bytes. */
struct bwsnap_cow_extent {
	u64 physical;		/* byte offset on the tracked device, 512-aligned */
	u64 length;		/* bytes, multiple of 512 */
	u64 first_slot;		/* index of the first 4 KiB slot inside */
	u64 nr_slots;		/* whole slots that fit: length / 4096 */
};

struct bwsnap_store;

/*
 * What the I/O path may ask of a COW store (cf. dm-exception-store.h).
 * The store owns the backing file, the slot allocator and the block -> slot
 * index; the I/O path owns all bios. Unless said otherwise a member is
 * called from the device's worker only, so the store needs no locking of
 * its own for those.
 */
struct bwsnap_store_ops {
	/*
	 * Take a free slot for a copy of @block: *@slot names it for commit(),
	 * *@sector is where to write the 4 KiB copy on the tracked device.
	 * lookup() does not find it before commit(). -ENOSPC when full (the
	 * store never grows).
	 */
	int (*reserve)(struct bwsnap_store *store, u64 block, u64 *slot,
		       sector_t *sector);
	/* The copy in @slot is on disk: lookup(@block) finds it from now on. */
	void (*commit)(struct bwsnap_store *store, u64 slot, u64 block);
	/* Where the committed copy of @block is; false when there is none. */
	bool (*lookup)(struct bwsnap_store *store, u64 block, sector_t *sector);
	/* Bytes of slot space in total and in committed use. Any context. */
	void (*usage)(struct bwsnap_store *store, u64 *total, u64 *used);
	/* The store's device extents, in file order; stable until release. */
	const struct bwsnap_cow_extent *(*extents)(struct bwsnap_store *store,
						   u32 *count);
	/*
	 * Call @fn for each device byte range holding slots reserve() handed
	 * out: the only blocks of the file the store ever wrote. The worker
	 * must be idle.
	 */
	void (*for_each_written)(struct bwsnap_store *store,
				 void (*fn)(void *arg, u64 physical, u64 length),
				 void *arg);
	/*
	 * Stop using the backing file (it stays on the filesystem, no longer
	 * immutable) and free the store. Process context; the caller has made
	 * sure no store I/O is in flight.
	 */
	void (*release)(struct bwsnap_store *store);
};

struct bwsnap_store {
	const struct bwsnap_store_ops *ops;
};

struct bwsnap_store *bwsnap_cowfile_create(struct block_device *bdev,
					   const char *path, u64 size);

/* ---- read-source trace (trace.c) ---- */

struct bwsnap_trace_ring {
	spinlock_t lock;
	struct bwsnap_trace_event *ev;	/* BWSNAP_TRACE_EVENTS entries */
	u64 head;			/* lock: next event written */
	u64 tail;			/* lock: next event read */
	u64 dropped;			/* lock: lost to a full ring, since last drain */
};

int bwsnap_trace_init(struct bwsnap_trace_ring *ring);
void bwsnap_trace_free(struct bwsnap_trace_ring *ring);
void bwsnap_trace_reset(struct bwsnap_trace_ring *ring);
void bwsnap_trace_add(struct bwsnap_trace_ring *ring, u64 block, u32 nr,
		      u32 source, u32 flags);
int bwsnap_trace_drain(struct bwsnap_trace_ring *ring,
		       struct bwsnap_trace_event __user *buf, u32 capacity,
		       u32 *copied, u64 *dropped);

/* ---- fault knobs (fault.c) ---- */

enum bwsnap_fault_kind {
	BWSNAP_FAULT_COW_READ_LIVE,
	BWSNAP_FAULT_DROP_TRACKING,
	BWSNAP_FAULT_CORRUPT_COW,
	BWSNAP_FAULT_DELAY_COW,
	BWSNAP_FAULT_DELAY_READ,
	BWSNAP_FAULT_DELAY_START,
	BWSNAP_FAULT_DELAY_EXTENTS,
};

/* True on every @n-th call for the same @counter (n == 0: never). */
static inline bool bwsnap_fault_fires(unsigned int n, u64 *counter)
{
	if (!n)
		return false;
	return ++*counter % n == 0;
}

void bwsnap_fault_log(enum bwsnap_fault_kind kind, u32 minor, u64 block);
void bwsnap_fault_pause(const unsigned int *knob, enum bwsnap_fault_kind kind,
			u32 minor, u64 block);
int bwsnap_fault_init(void);
void bwsnap_fault_exit(void);

/* ---- the tracked device ---- */

/* Where one block of a snapshot read comes from (worker scratch). */
struct bwsnap_plan {
	sector_t sector;	/* origin or COW slot sector to read */
	u32 source;		/* enum bwsnap_source */
	u32 flags;		/* BWSNAP_TRACE_* */
};

struct bwsnap_dev {
	/* Set at setup, constant until the device is freed. */
	u32 minor;
	uuid_t uuid;
	struct block_device *bdev;
	struct bwsnap_bdev_ref bdev_ref;
	u64 dev_sectors;
	u64 nr_blocks;			/* DIV_ROUND_UP(bytes, 4096) */
	char bdev_path[BWSNAP_INFO_PATH_MAX];

	spinlock_t lock;		/* irq-safe; guards the fields marked "lock" */
	/* Written under the ctl mutex and lock; read under either. */
	enum bwsnap_state state;
	int error;			/* lock: -errno that invalidated the snapshot */
	u64 seq;			/* lock: STARTs so far */
	struct bio_list queue;		/* lock: held writes and snapshot reads, in order */
	bool worker_busy;		/* lock: worker is processing a batch */
	/*
	 * Changed-block maps, one bit per block. The pointers are swapped at
	 * START under lock; the hook sets tracking bits under lock.
	 * period: the map frozen at the last START; ctl mutex.
	 */
	unsigned long *tracking;
	unsigned long *period;
	/*
	 * done: blocks whose copy is in the store. Set by the worker (atomic
	 * bitops) after the copy is on disk, read by the hook under lock;
	 * cleared under the ctl mutex while ARMED (no copies then).
	 * excl: blocks lying wholly inside the COW file: never copied, never
	 * tracked. Written under lock and the ctl mutex, read by the hook under
	 * lock.
	 */
	unsigned long *done;
	unsigned long *excl;

	wait_queue_head_t worker_wq;	/* work queued or stop asked */
	wait_queue_head_t idle_wq;	/* queue drained, worker idle */
	struct task_struct *worker;
	/* Worker-only scratch for one run of blocks. */
	struct page *bounce[BWSNAP_RUN_BLOCKS];
	u64 slot[BWSNAP_RUN_BLOCKS];
	sector_t slot_sector[BWSNAP_RUN_BLOCKS];
	struct bwsnap_plan plan[BWSNAP_RUN_BLOCKS];

	/*
	 * ctl mutex to change. The worker uses the store only while state is
	 * SNAPSHOT; ctl waits for the worker to go idle before releasing it.
	 */
	struct bwsnap_store *store;
	struct gendisk *disk;		/* ctl mutex; allocated while ARMED/SNAPSHOT */
	bool disk_added;		/* ctl mutex */

	/* Counters since setup (INFO). */
	atomic64_t tracking_blocks;	/* bits set in tracking since START */
	atomic64_t cow_copies;
	atomic64_t cow_reads;
	atomic64_t live_reads;
	atomic64_t tracked_writes;
	u64 changed_blocks;		/* ctl mutex: bits in period */

	/* Fault knob counters, reset at START. */
	u64 fault_read_live_cnt;	/* worker */
	u64 fault_corrupt_cnt;		/* worker */
	u64 fault_drop_cnt;		/* ctl mutex */

	struct bwsnap_trace_ring trace;
};

/* ---- control (ctl.c), all called with bwsnap_ctl_mutex held ---- */

extern struct mutex bwsnap_ctl_mutex;

struct bwsnap_dev *bwsnap_ctl_get(u32 minor);
int bwsnap_ctl_setup(u32 minor, const char *bdev_path, const char *cow_path,
		     u64 cow_size);
int bwsnap_ctl_start(struct bwsnap_dev *dev);
int bwsnap_ctl_to_incremental(struct bwsnap_dev *dev);
int bwsnap_ctl_to_snapshot(struct bwsnap_dev *dev, const char *cow_path,
			   u64 cow_size);
void bwsnap_ctl_destroy(struct bwsnap_dev *dev);
void bwsnap_ctl_info(struct bwsnap_dev *dev, struct bwsnap_info *info);
int bwsnap_ctl_read_map(struct bwsnap_dev *dev, struct bwsnap_map *m);
int bwsnap_ctl_extents(struct bwsnap_dev *dev, struct bwsnap_extents *e);

/* ---- hook (hook.c) ---- */

int bwsnap_hook_init(void);
void bwsnap_hook_exit(void);
/* Make the hook see exactly the devices in use; ctl mutex held. Sleeps. */
int bwsnap_hook_publish(struct bwsnap_dev *add, struct bwsnap_dev *remove);
/* Submit a bio the hook must let through (see hook.c). */
void bwsnap_submit_passthrough(struct bio *bio);

/* ---- I/O path (io.c) ---- */

enum bwsnap_verdict {
	BWSNAP_PASS,		/* caller submits the bio on */
	BWSNAP_QUEUED,		/* the worker owns the bio now */
	BWSNAP_COMPLETED,	/* the bio has been ended */
};

enum bwsnap_verdict bwsnap_io_intercept(struct bwsnap_dev *dev,
					struct bio *bio);
int bwsnap_io_worker_start(struct bwsnap_dev *dev);
void bwsnap_io_worker_stop(struct bwsnap_dev *dev);
void bwsnap_io_worker_flush(struct bwsnap_dev *dev);
int bwsnap_io_disk_alloc(struct bwsnap_dev *dev);
int bwsnap_io_disk_add(struct bwsnap_dev *dev);
void bwsnap_io_disk_free(struct bwsnap_dev *dev);
void bwsnap_io_set_excl(struct bwsnap_dev *dev, bool set);
void bwsnap_io_mark_store(struct bwsnap_dev *dev);

#endif /* _BWSNAP_H */
