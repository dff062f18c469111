/* SPDX-License-Identifier: GPL-2.0 */
/*
 * bwsnap internals: the tracked device, the COW store interface and the
 * entry points each part of the module offers the others.
 *
 * Parts (one file each):
 *   main.c     module init/exit, parameters, /dev/bwsnap-ctl, ioctl decoding
 *   ctl.c      the state machine and the minor table: setup, start,
 *              transitions, destroy, info
 *   hook.c     the ftrace hook on submit_bio_noacct and the tracked-bdev table
 *   io.c       writes on the tracked device: interception, tracking, holding
 *              them for their copies, the START drain, closing a snapshot
 *   copy.c     the copy engine: pending copies and their completion chain
 *   snap.c     the snapshot device: reads split by source, track_chunk
 *   cowfile.c  the COW store: the preallocated file, its extents, slots, index
 *   fault.c    fault knobs and the debugfs log of their firings
 *   trace.c    the read-source trace ring
 *
 * Lock order (outermost first):
 *   dev->ctl_lock (one per minor; never two at once)
 *     > bwsnap_minors_lock (ctl.c), bwsnap_hook_lock (hook.c)
 *       > dev->lock
 *         > dev->trace.lock, the fault log lock
 * dev->lock and the two innermost are irq-safe spinlocks: bios complete in
 * interrupt context and their completions take them. Nothing sleeps under
 * them. A function named __bwsnap_* expects its caller to hold dev->lock.
 */
#ifndef _BWSNAP_H
#define _BWSNAP_H

#include <linux/types.h>
#include <linux/atomic.h>
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/kref.h>
#include <linux/mempool.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/uuid.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "bwsnap_abi.h"
#include "compat.h"

#define BWSNAP_SECTORS_PER_BLOCK	(BWSNAP_BLOCK_SIZE >> SECTOR_SHIFT)
/*
 * A copy covers a run of at most this many blocks inside one aligned group
 * of as many: one origin read, one slot write per physically contiguous
 * run of slots. Sequential writes are fast because of these runs.
 */
#define BWSNAP_RUN_BLOCKS		64
/*
 * Bounce pages per device: what caps the copies in flight (8 runs of 64
 * blocks, or 512 single blocks). A copy waits for its pages, in order.
 */
#define BWSNAP_COPY_PAGES		512
/* Buckets of the pending-copy hash (keyed by 64-block group). */
#define BWSNAP_COPY_HASH_BITS		8
/* Read-source trace ring capacity (events); a power of two. */
#define BWSNAP_TRACE_EVENTS		65536
/* START waits at most this long for writes in flight to complete. */
#define BWSNAP_DRAIN_TIMEOUT		(60 * HZ)

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
extern unsigned int bwsnap_fault_teardown_open;

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
 * index; the I/O path owns all bios. Copies run concurrently, and complete
 * in any order: reserve(), commit() and lookup() are serialised by the
 * lock the store was created with (the device's dev->lock, irq-safe), which
 * their callers hold; they must not sleep or allocate.
 */
struct bwsnap_store_ops {
	/*
	 * Take a free slot for a copy of @block: *@slot names it for commit(),
	 * *@sector is where to write the 4 KiB copy on the tracked device.
	 * lookup() does not find it before commit(). -ENOSPC when full (the
	 * store never grows). Caller holds the store's lock.
	 */
	int (*reserve)(struct bwsnap_store *store, u64 block, u64 *slot,
		       sector_t *sector);
	/*
	 * The copy in @slot is on disk: lookup(@block) finds it from now on.
	 * Caller holds the store's lock.
	 */
	void (*commit)(struct bwsnap_store *store, u64 slot, u64 block);
	/*
	 * Where the committed copy of @block is; false when there is none.
	 * Caller holds the store's lock.
	 */
	bool (*lookup)(struct bwsnap_store *store, u64 block, sector_t *sector);
	/* Bytes of slot space in total and in committed use. Any context. */
	void (*usage)(struct bwsnap_store *store, u64 *total, u64 *used);
	/* The store's device extents, in file order; constant until release. */
	const struct bwsnap_cow_extent *(*extents)(struct bwsnap_store *store,
						   u32 *count);
	/*
	 * Call @fn for each device byte range holding slots reserve() handed
	 * out: the only blocks of the file the store ever wrote. No copy may
	 * be in flight (the device is drained). Process context.
	 */
	void (*for_each_written)(struct bwsnap_store *store,
				 void (*fn)(void *arg, u64 physical, u64 length),
				 void *arg);
	/*
	 * Stop using the backing file (it stays on the filesystem, no longer
	 * immutable) and free the store. Process context; no store I/O may be
	 * in flight.
	 */
	void (*release)(struct bwsnap_store *store);
};

struct bwsnap_store {
	const struct bwsnap_store_ops *ops;
};

struct bwsnap_store *bwsnap_cowfile_create(struct block_device *bdev,
					   const char *path, u64 size,
					   spinlock_t *lock, u32 minor);

/* ---- read-source trace (trace.c) ---- */

struct bwsnap_trace_ring {
	spinlock_t lock;		/* irq-safe: reads complete in irq context */
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
	BWSNAP_FAULT_TEARDOWN_OPEN,
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

struct bwsnap_copy;
struct bwsnap_read;

struct bwsnap_dev {
	/* Set at setup, constant until the device is freed. */
	u32 minor;
	uuid_t uuid;
	struct block_device *bdev;	/* set under bwsnap_minors_lock */
	struct bwsnap_bdev_ref bdev_ref;
	u64 dev_sectors;
	u64 nr_blocks;			/* DIV_ROUND_UP(bytes, 4096) */
	char bdev_path[BWSNAP_INFO_PATH_MAX];

	/* The minor table's reference and one per control call in progress. */
	struct kref kref;
	/* Serialises this minor's control calls; taken killable. */
	struct mutex ctl_lock;
	bool dead;			/* ctl_lock: destroyed, or setup failed */
	bool live;			/* ctl_lock: setup completed */
	bool closed;			/* ctl_lock: destroy has closed the device */
	bool disarm_pending;		/* ctl_lock: store left to release */

	spinlock_t lock;		/* irq-safe; guards the fields marked "lock" */
	/* Written under ctl_lock and lock; read under either. */
	enum bwsnap_state state;
	bool starting;			/* lock: START drains; writes wait in start_held */
	int error;			/* lock: -errno that invalidated the snapshot */
	u64 seq;			/* lock: STARTs so far */
	/*
	 * lock: bumped whenever the snapshot stops serving (closed, or failed)
	 * before any write is let through uncopied; a snapshot read in flight
	 * across a bump fails with EIO.
	 */
	u32 gen;
	/*
	 * Changed-block maps, one bit per block. The pointers are swapped at
	 * START under lock; bits are set under lock.
	 * period: the map frozen at the last START; ctl_lock.
	 */
	unsigned long *tracking;
	unsigned long *period;
	/*
	 * cow: blocks whose copy is committed in the store (snapshot reads go
	 * to the slot). pending: blocks with a copy in the hash (writes to
	 * them wait). A write passes a block that is cow and not pending.
	 * Both: lock; cleared under ctl_lock while ARMED (no copies then).
	 * excl: blocks lying wholly inside the COW file: never copied, never
	 * tracked. lock (set and cleared under ctl_lock as well).
	 */
	unsigned long *cow;
	unsigned long *pending;
	unsigned long *excl;

	/* The copy engine (copy.c). All lock. */
	struct hlist_head copy_hash[1 << BWSNAP_COPY_HASH_BITS];
	struct list_head copy_wait;	/* copies waiting for bounce pages, FIFO */
	struct list_head copy_blocked;	/* committed, waiting for older reads */
	struct bio_list copy_nomem;	/* writes waiting for a copy entry */
	struct page **pages;		/* free bounce pages, a stack */
	unsigned int nr_pages;		/* entries of pages[] in use */
	mempool_t copy_pool;		/* struct bwsnap_copy */

	/* Snapshot reads in flight (snap.c). lock. */
	struct list_head reads;		/* oldest first */
	u64 read_seq;			/* registrations so far */

	/*
	 * lock: writes let through and still inside submit_bio_noacct()
	 * (START waits for them), and copies, held writes waiting for memory
	 * and snapshot reads alive (closing waits for them).
	 */
	unsigned int passing;
	unsigned int inflight;
	wait_queue_head_t drain_wq;	/* passing or inflight reached 0 */
	struct bio_list start_held;	/* lock: writes that came during START */

	/* Every bio the module allocates comes from here (never fs_bio_set). */
	struct bio_set bs;
	/* Copy steps run here (bound, high priority: the completion's CPU). */
	struct workqueue_struct *wq;
	/* Writes waiting for a copy entry get one here (may sleep in mempool). */
	struct workqueue_struct *alloc_wq;
	struct work_struct nomem_work;

	/*
	 * ctl_lock to change. The I/O path uses the store only while the
	 * state is SNAPSHOT and it holds an inflight count; ctl releases it
	 * only after draining.
	 */
	struct bwsnap_store *store;
	struct gendisk *disk;		/* ctl_lock; allocated while ARMED/SNAPSHOT */
	bool disk_added;		/* ctl_lock */

	/* Counters since setup (INFO). */
	atomic64_t tracking_blocks;	/* bits set in tracking since START */
	atomic64_t cow_copies;
	atomic64_t cow_reads;
	atomic64_t live_reads;
	atomic64_t tracked_writes;
	u64 changed_blocks;		/* ctl_lock: bits in period */

	/* Fault knob counters, reset at START. */
	u64 fault_read_live_cnt;	/* lock */
	u64 fault_corrupt_cnt;		/* lock */
	u64 fault_teardown_cnt;		/* lock */
	u64 fault_drop_cnt;		/* ctl_lock */

	struct bwsnap_trace_ring trace;
};

/* ---- control (ctl.c) ---- */

/* The device of @minor with a reference, or NULL. */
struct bwsnap_dev *bwsnap_ctl_get(u32 minor);
void bwsnap_ctl_put(struct bwsnap_dev *dev);
/* Take @dev's ctl_lock (killable); -ENOENT once it is gone. */
int bwsnap_ctl_lock(struct bwsnap_dev *dev);
void bwsnap_ctl_unlock(struct bwsnap_dev *dev);

/* These take the minor's ctl_lock themselves. */
int bwsnap_ctl_setup(u32 minor, const char *bdev_path, const char *cow_path,
		     u64 cow_size);
/* These expect it held. */
int bwsnap_ctl_start(struct bwsnap_dev *dev);
int bwsnap_ctl_to_incremental(struct bwsnap_dev *dev);
int bwsnap_ctl_to_snapshot(struct bwsnap_dev *dev, const char *cow_path,
			   u64 cow_size);
int bwsnap_ctl_destroy(struct bwsnap_dev *dev);
void bwsnap_ctl_info(struct bwsnap_dev *dev, struct bwsnap_info *info);
int bwsnap_ctl_read_map(struct bwsnap_dev *dev, struct bwsnap_map *m);
int bwsnap_ctl_extents(struct bwsnap_dev *dev, struct bwsnap_extents *e);

/* ---- hook (hook.c) ---- */

int bwsnap_hook_init(void);
void bwsnap_hook_exit(void);
/* Make the hook see exactly the devices in use. Sleeps (RCU grace period). */
int bwsnap_hook_publish(struct bwsnap_dev *add, struct bwsnap_dev *remove);
/* Submit a bio the hook must let through (see hook.c). */
void bwsnap_submit_passthrough(struct bio *bio);

/* ---- writes (io.c) ---- */

enum bwsnap_verdict {
	BWSNAP_PASS,		/* caller submits the bio on (counted in passing) */
	BWSNAP_HELD,		/* the module owns the bio now */
	BWSNAP_COMPLETED,	/* the bio has been ended */
};

/* What the hook must do after it dropped the RCU read lock. */
struct bwsnap_todo {
	struct list_head start;		/* copies to start */
};

enum bwsnap_verdict bwsnap_io_intercept(struct bwsnap_dev *dev,
					struct bio *bio,
					struct bwsnap_todo *todo);
void bwsnap_io_followup(struct bwsnap_dev *dev, struct bio *bio,
			enum bwsnap_verdict verdict, struct bwsnap_todo *todo);
void bwsnap_io_resubmit(struct bwsnap_dev *dev, struct bio *bio);
bool bwsnap_io_bio_blocks(struct bwsnap_dev *dev, struct bio *bio, u64 *first,
			  u64 *last);
int bwsnap_io_init(struct bwsnap_dev *dev);
void bwsnap_io_free(struct bwsnap_dev *dev);
int bwsnap_io_start(struct bwsnap_dev *dev);
void bwsnap_io_close(struct bwsnap_dev *dev, enum bwsnap_state state);
void bwsnap_io_invalidate(struct bwsnap_dev *dev, int err);
int bwsnap_io_drain(struct bwsnap_dev *dev);
void bwsnap_io_set_excl(struct bwsnap_dev *dev, bool set);
void bwsnap_io_mark_store(struct bwsnap_dev *dev);
void __bwsnap_io_inflight_inc(struct bwsnap_dev *dev);
void bwsnap_io_inflight_dec(struct bwsnap_dev *dev);
void __bwsnap_io_inflight_dec(struct bwsnap_dev *dev);

/* ---- the copy engine (copy.c) ---- */

enum bwsnap_verdict __bwsnap_copy_hold(struct bwsnap_dev *dev, struct bio *bio,
				       u64 first, u64 last,
				       struct bwsnap_copy **spare,
				       struct list_head *start);
void bwsnap_copy_start_list(struct list_head *start, gfp_t gfp);
void __bwsnap_copy_stop(struct bwsnap_dev *dev, struct bio_list *writes,
			struct list_head *idle);
void bwsnap_copy_free_idle(struct bwsnap_dev *dev, struct list_head *idle);
void __bwsnap_copy_unblock(struct bwsnap_dev *dev);
struct bwsnap_copy *bwsnap_copy_alloc(struct bwsnap_dev *dev, gfp_t gfp);
void bwsnap_copy_put_spare(struct bwsnap_dev *dev, struct bwsnap_copy *spare);
void bwsnap_copy_nomem_work(struct work_struct *work);
int bwsnap_copy_init(struct bwsnap_dev *dev);
void bwsnap_copy_exit(struct bwsnap_dev *dev);

/* ---- the snapshot device (snap.c) ---- */

/* Front pad of every bio from dev->bs (see snap.c). */
unsigned int bwsnap_snap_front_pad(void);
bool __bwsnap_snap_reads_conflict(struct bwsnap_dev *dev, u64 first, u32 nr,
				  u64 before_seq);
int bwsnap_snap_disk_alloc(struct bwsnap_dev *dev);
int bwsnap_snap_disk_add(struct bwsnap_dev *dev);
void bwsnap_snap_disk_free(struct bwsnap_dev *dev);

#endif /* _BWSNAP_H */
