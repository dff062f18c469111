// SPDX-License-Identifier: GPL-2.0
/*
 * Writes on the tracked device: what the hook does with them, the START
 * drain, and closing a snapshot.
 *
 * A write reaches bwsnap_io_intercept() from the hook, in the submitter's
 * context, under rcu_read_lock() (so: no sleeping there). Under dev->lock it
 * marks the written blocks in the tracking map and, in SNAPSHOT state,
 * hands the bio to the copy engine (copy.c) if any block it writes still
 * needs its pre-snapshot content copied: the bio is then held until those
 * copies are committed and no snapshot read of its blocks is in flight.
 * Everything else passes on at once. Copies the engine wants started are
 * started in bwsnap_io_followup(), after the RCU read lock is dropped.
 *
 * Treatment of special bios (tracked device):
 *  - empty flush: passes (it orders only completed writes; held ones are
 *    not completed, so the flush need not cover them);
 *  - data with PREFLUSH/FUA: like any write, the flags stay on the bio;
 *  - discard: ARMED and INCREMENTAL: passes, tracked (no snapshot to keep
 *    yet / any more). SNAPSHOT: completed at once without reaching the
 *    device (discard is advisory; passing it would destroy pre-snapshot
 *    data without a copy), not tracked (nothing changed);
 *  - secure erase: as a discard, except in SNAPSHOT, where it is refused
 *    with EOPNOTSUPP (it must not be reported done when nothing was erased);
 *  - write-zeroes: a write (copy first, tracked);
 *  - blocks wholly inside the COW file (excl): never copied nor tracked.
 *
 * START is the snapshot instant. Before it switches the state, writes that
 * already passed the hook must have completed, or one landing later would
 * change the snapshot under its reader: START holds new writes back, waits
 * until every passed write has been handed to the block layer (passing ==
 * 0), then freezes the request queue, which waits for every request in
 * flight to complete, switches, and lets the queue and the held writes go.
 *
 * Closing (TO_INCREMENTAL, DESTROY) and invalidating (COW file full, I/O
 * error) first bump dev->gen under dev->lock, and only then let held
 * writes go: a snapshot read in flight across the bump fails with EIO
 * (snap.c), so no read returns data written after the snapshot stopped
 * serving. The store is released only after the drain: no copy and no
 * snapshot read left in flight.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/blk-mq.h>
#include <linux/minmax.h>
#include <linux/sched/signal.h>

#include "bwsnap.h"

/* Blocks [*first, *last] that @bio touches; false when none (or past end). */
bool bwsnap_io_bio_blocks(struct bwsnap_dev *dev, struct bio *bio, u64 *first,
			  u64 *last)
{
	sector_t sector = bio->bi_iter.bi_sector;
	unsigned int nr = bio_sectors(bio);
	sector_t end;

	if (!nr)
		return false;
	/*
	 * The part of a bio split after the partition remap comes back with
	 * whole-disk sectors.
	 */
	if (bio_flagged(bio, BIO_REMAPPED) && bdev_is_partition(dev->bdev)) {
		if (sector < dev->bdev->bd_start_sect)
			return false;
		sector -= dev->bdev->bd_start_sect;
	}
	if (sector >= dev->dev_sectors)
		return false;
	end = min_t(u64, sector + nr, dev->dev_sectors);
	*first = sector / BWSNAP_SECTORS_PER_BLOCK;
	*last = (end - 1) / BWSNAP_SECTORS_PER_BLOCK;
	return true;
}

/*
 * Set the bits [first, last] of @map that are not in @excl (may be NULL);
 * return how many were newly set. Caller holds dev->lock (the only writers
 * of the tracking map run under it, so plain word updates suffice).
 */
static u64 __bwsnap_mark_range(unsigned long *map, const unsigned long *excl,
			       u64 first, u64 last)
{
	u64 added = 0, b = first;

	while (b <= last) {
		u64 w = b / BITS_PER_LONG;
		unsigned int lo = b % BITS_PER_LONG;
		unsigned int hi = min_t(u64, last - w * BITS_PER_LONG,
					BITS_PER_LONG - 1);
		unsigned long add = GENMASK(hi, lo) & ~map[w];

		if (excl)
			add &= ~excl[w];
		map[w] |= add;
		added += hweight_long(add);
		b = (w + 1) * BITS_PER_LONG;
	}
	return added;
}

/* Caller holds dev->lock. */
static void __bwsnap_io_track(struct bwsnap_dev *dev, u64 first, u64 last)
{
	lockdep_assert_held(&dev->lock);
	atomic64_inc(&dev->tracked_writes);
	atomic64_add(__bwsnap_mark_range(dev->tracking, dev->excl, first, last),
		     &dev->tracking_blocks);
}

void __bwsnap_io_inflight_inc(struct bwsnap_dev *dev)
{
	lockdep_assert_held(&dev->lock);
	dev->inflight++;
}

/*
 * Caller holds dev->lock. The waiter re-checks under the lock, so once it
 * sees zero the last decrementer no longer touches the device.
 */
void __bwsnap_io_inflight_dec(struct bwsnap_dev *dev)
{
	lockdep_assert_held(&dev->lock);
	if (!--dev->inflight)
		wake_up_all(&dev->drain_wq);
}

/* Any context. */
void bwsnap_io_inflight_dec(struct bwsnap_dev *dev)
{
	unsigned long flags;

	spin_lock_irqsave(&dev->lock, flags);
	__bwsnap_io_inflight_dec(dev);
	spin_unlock_irqrestore(&dev->lock, flags);
}

/*
 * A write bound for the tracked device, from the hook: caller holds
 * rcu_read_lock(), which keeps @dev alive until the counts taken here do.
 * Must not sleep or submit. Copies to start go to @todo.
 */
enum bwsnap_verdict bwsnap_io_intercept(struct bwsnap_dev *dev,
					struct bio *bio,
					struct bwsnap_todo *todo)
{
	enum bwsnap_verdict verdict = BWSNAP_PASS;
	enum req_op op = bio_op(bio);
	bool has_blocks;
	unsigned long flags;
	u64 first = 0, last = 0;

	has_blocks = bwsnap_io_bio_blocks(dev, bio, &first, &last);
	spin_lock_irqsave(&dev->lock, flags);
	if (dev->starting) {
		/* Looked at again once the instant is taken (bwsnap_io_start). */
		bio_list_add(&dev->start_held, bio);
		spin_unlock_irqrestore(&dev->lock, flags);
		return BWSNAP_HELD;
	}
	if (!has_blocks)
		goto out;
	switch (dev->state) {
	case BWSNAP_STATE_ARMED:
	case BWSNAP_STATE_INCREMENTAL:
		__bwsnap_io_track(dev, first, last);
		break;
	case BWSNAP_STATE_SNAPSHOT:
		if (op == REQ_OP_DISCARD) {
			bio->bi_status = BLK_STS_OK;
			verdict = BWSNAP_COMPLETED;
			break;
		}
		if (op == REQ_OP_SECURE_ERASE) {
			bio->bi_status = BLK_STS_NOTSUPP;
			verdict = BWSNAP_COMPLETED;
			break;
		}
		__bwsnap_io_track(dev, first, last);
		if (dev->error)
			break;
		verdict = __bwsnap_copy_hold(dev, bio, first, last, NULL,
					     &todo->start);
		break;
	case BWSNAP_STATE_NONE:
		break;
	}
out:
	if (verdict == BWSNAP_PASS)
		dev->passing++;
	spin_unlock_irqrestore(&dev->lock, flags);
	return verdict;
}

/* A write let through by the hook is in the block layer's hands now. */
static void bwsnap_io_passed(struct bwsnap_dev *dev)
{
	unsigned long flags;

	spin_lock_irqsave(&dev->lock, flags);
	if (!--dev->passing)
		wake_up_all(&dev->drain_wq);
	spin_unlock_irqrestore(&dev->lock, flags);
}

/*
 * What the hook does after bwsnap_io_intercept() and rcu_read_unlock(), in
 * the submitter's context: submit a passed bio, end a completed one, start
 * new copies. A REQ_NOWAIT submitter must not wait for a tag in our read:
 * its copies start from the work queue.
 */
void bwsnap_io_followup(struct bwsnap_dev *dev, struct bio *bio,
			enum bwsnap_verdict verdict, struct bwsnap_todo *todo)
{
	switch (verdict) {
	case BWSNAP_PASS:
		bwsnap_submit_passthrough(bio);
		bwsnap_io_passed(dev);
		break;
	case BWSNAP_COMPLETED:
		bio_endio(bio);
		break;
	case BWSNAP_HELD:
		bwsnap_copy_start_list(&todo->start,
				       bio->bi_opf & REQ_NOWAIT ? 0 : GFP_NOWAIT);
		break;
	}
}

/*
 * A write the module held before it was looked at (START), run through
 * the hook's logic now. Process context; the caller keeps @dev alive.
 */
void bwsnap_io_resubmit(struct bwsnap_dev *dev, struct bio *bio)
{
	enum bwsnap_verdict verdict;
	struct bwsnap_todo todo;

	INIT_LIST_HEAD(&todo.start);
	verdict = bwsnap_io_intercept(dev, bio, &todo);
	bwsnap_io_followup(dev, bio, verdict, &todo);
}

/* ---- START ---- */

/* Caller holds dev->lock. */
static bool __bwsnap_io_quiet(struct bwsnap_dev *dev, bool inflight_too)
{
	lockdep_assert_held(&dev->lock);
	return !dev->passing && (!inflight_too || !dev->inflight);
}

static bool bwsnap_io_quiet(struct bwsnap_dev *dev, bool inflight_too)
{
	bool quiet;

	spin_lock_irq(&dev->lock);
	quiet = __bwsnap_io_quiet(dev, inflight_too);
	spin_unlock_irq(&dev->lock);
	return quiet;
}

/*
 * Freeze @q: wait for every request in flight on the disk to complete, at
 * most BWSNAP_DRAIN_TIMEOUT, giving up when the caller is killed. On
 * failure the queue is unfrozen again.
 */
static int bwsnap_io_freeze(struct request_queue *q)
{
	unsigned long deadline = jiffies + BWSNAP_DRAIN_TIMEOUT;

	blk_freeze_queue_start(q);
	while (!blk_mq_freeze_queue_wait_timeout(q, HZ)) {
		if (fatal_signal_pending(current) ||
		    time_after(jiffies, deadline)) {
			blk_mq_unfreeze_queue(q);
			return fatal_signal_pending(current) ? -EINTR : -ETIMEDOUT;
		}
	}
	return 0;
}

/*
 * Take the snapshot instant: drain the writes that passed before it, swap
 * the changed-block maps, enter SNAPSHOT. ctl_lock held, state ARMED.
 * Writes arriving meanwhile are held and then treated as post-snapshot.
 */
int bwsnap_io_start(struct bwsnap_dev *dev)
{
	struct request_queue *q = bdev_get_queue(dev->bdev);
	struct bio_list held;
	struct bio *bio;
	long left;
	int err;

	spin_lock_irq(&dev->lock);
	dev->starting = true;
	spin_unlock_irq(&dev->lock);

	/* Every passed write in the block layer's hands... */
	left = wait_event_killable_timeout(dev->drain_wq,
					   bwsnap_io_quiet(dev, false),
					   BWSNAP_DRAIN_TIMEOUT);
	err = left < 0 ? left : left == 0 ? -ETIMEDOUT : 0;
	/* ...and completed. */
	if (!err)
		err = bwsnap_io_freeze(q);
	if (err)
		pr_err("minor %u: START: writes in flight did not complete: %d\n",
		       dev->minor, err);

	spin_lock_irq(&dev->lock);
	if (!err) {
		swap(dev->tracking, dev->period);
		atomic64_set(&dev->tracking_blocks, 0);
		dev->error = 0;
		dev->seq++;
		dev->gen++;
		dev->state = BWSNAP_STATE_SNAPSHOT;
	}
	dev->starting = false;
	held = dev->start_held;
	bio_list_init(&dev->start_held);
	spin_unlock_irq(&dev->lock);
	if (!err)
		blk_mq_unfreeze_queue(q);
	/* After the instant (or, failed, before it): as if they came now. */
	while ((bio = bio_list_pop(&held)))
		bwsnap_io_resubmit(dev, bio);
	return err;
}

/* ---- closing ---- */

/*
 * Stop serving the snapshot: bump gen (reads in flight will fail), then let
 * every held write go uncopied. @state: the new state (closing), or, with
 * @err set, keep SNAPSHOT and fail it (invalidation; nothing to do when
 * the snapshot is closed or failed already). Returns whether it acted.
 * Process context.
 */
static bool bwsnap_io_stop(struct bwsnap_dev *dev, enum bwsnap_state state,
			   int err)
{
	struct bio_list writes;
	LIST_HEAD(idle);
	struct bio *bio;

	bio_list_init(&writes);
	spin_lock_irq(&dev->lock);
	if (err) {
		if (dev->state != BWSNAP_STATE_SNAPSHOT || dev->error) {
			spin_unlock_irq(&dev->lock);
			return false;
		}
		dev->error = err;
	} else {
		dev->state = state;
		/* The COW file's blocks are the filesystem's again: track them. */
		bitmap_zero(dev->excl, dev->nr_blocks);
	}
	dev->gen++;
	__bwsnap_copy_stop(dev, &writes, &idle);
	spin_unlock_irq(&dev->lock);
	while ((bio = bio_list_pop(&writes)))
		bwsnap_submit_passthrough(bio);
	bwsnap_copy_free_idle(dev, &idle);
	return true;
}

/* Leave SNAPSHOT (TO_INCREMENTAL, DESTROY). ctl_lock held. */
void bwsnap_io_close(struct bwsnap_dev *dev, enum bwsnap_state state)
{
	bwsnap_io_stop(dev, state, 0);
}

/*
 * Fail the snapshot: from now on every snapshot read gets EIO, held and new
 * writes go on uncopied, tracking goes on. Process context.
 */
void bwsnap_io_invalidate(struct bwsnap_dev *dev, int err)
{
	if (bwsnap_io_stop(dev, BWSNAP_STATE_SNAPSHOT, err))
		pr_err("snapshot %u of %pg invalidated: %d%s\n", dev->minor,
		       dev->bdev, err, err == -ENOSPC ? " (COW file full)" : "");
}

/*
 * Wait until no write is inside the hook's pass-through and no copy or
 * snapshot read is in flight. Killable; -EINTR leaves the caller to try
 * again. Process context.
 */
int bwsnap_io_drain(struct bwsnap_dev *dev)
{
	int err;

	err = wait_event_killable(dev->drain_wq, bwsnap_io_quiet(dev, true));
	if (err)
		return err;
	/* Work items may still be returning from their last step. */
	flush_workqueue(dev->wq);
	flush_workqueue(dev->alloc_wq);
	return 0;
}

/* ---- setup and teardown of the I/O path (ctl_lock held) ---- */

int bwsnap_io_init(struct bwsnap_dev *dev)
{
	int err;

	init_waitqueue_head(&dev->drain_wq);
	bio_list_init(&dev->start_held);
	INIT_LIST_HEAD(&dev->reads);
	/*
	 * Our own pool: the filesystem's bios we hold come from fs_bio_set,
	 * and an allocation from there could wait for them. The rescuer keeps
	 * allocations inside a submission (current->bio_list) from waiting for
	 * bios still queued on that list.
	 */
	err = bioset_init(&dev->bs, BIO_POOL_SIZE, bwsnap_snap_front_pad(),
			  BIOSET_NEED_BVECS | BIOSET_NEED_RESCUER);
	if (err)
		return err;
	/*
	 * Bound to the CPU that queues (the completion's): no cross-CPU
	 * wakeup between the steps of a copy.
	 */
	dev->wq = alloc_workqueue("bwsnap%u", WQ_MEM_RECLAIM | WQ_HIGHPRI, 0,
				  dev->minor);
	if (!dev->wq) {
		err = -ENOMEM;
		goto err_wq;
	}
	dev->alloc_wq = alloc_workqueue("bwsnap%u-alloc", WQ_MEM_RECLAIM, 1,
					dev->minor);
	if (!dev->alloc_wq) {
		err = -ENOMEM;
		goto err_alloc_wq;
	}
	err = bwsnap_copy_init(dev);
	if (err)
		goto err_copy;
	return 0;

err_copy:
	destroy_workqueue(dev->alloc_wq);
err_alloc_wq:
	destroy_workqueue(dev->wq);
err_wq:
	bioset_exit(&dev->bs);
	return err;
}

/* The device is drained. */
void bwsnap_io_free(struct bwsnap_dev *dev)
{
	bwsnap_copy_exit(dev);
	destroy_workqueue(dev->alloc_wq);
	destroy_workqueue(dev->wq);
	bioset_exit(&dev->bs);
}

/* ---- the COW file's blocks in the maps (ctl_lock held) ---- */

/* Mark (or with !set clear) the blocks lying wholly in the COW file. */
void bwsnap_io_set_excl(struct bwsnap_dev *dev, bool set)
{
	const struct bwsnap_cow_extent *ext;
	u32 i, n;

	if (!set) {
		spin_lock_irq(&dev->lock);
		bitmap_zero(dev->excl, dev->nr_blocks);
		spin_unlock_irq(&dev->lock);
		return;
	}
	ext = dev->store->ops->extents(dev->store, &n);
	for (i = 0; i < n; i++) {
		u64 first = DIV_ROUND_UP(ext[i].physical, BWSNAP_BLOCK_SIZE);
		u64 end = (ext[i].physical + ext[i].length) >> BWSNAP_BLOCK_SHIFT;

		if (end <= first)
			continue;
		spin_lock_irq(&dev->lock);
		bitmap_set(dev->excl, first, end - first);
		spin_unlock_irq(&dev->lock);
	}
}

static void bwsnap_io_mark_written(void *arg, u64 physical, u64 length)
{
	struct bwsnap_dev *dev = arg;
	u64 first = physical >> BWSNAP_BLOCK_SHIFT;
	u64 last = (physical + length - 1) >> BWSNAP_BLOCK_SHIFT;

	spin_lock_irq(&dev->lock);
	atomic64_add(__bwsnap_mark_range(dev->tracking, NULL, first, last),
		     &dev->tracking_blocks);
	spin_unlock_irq(&dev->lock);
}

/*
 * Mark every block holding a COW slot the store wrote as changed: those
 * writes went behind the filesystem's back, so the next incremental must
 * send them. The rest of the file was never written and still holds what
 * the snapshot showed. The device is drained.
 */
void bwsnap_io_mark_store(struct bwsnap_dev *dev)
{
	dev->store->ops->for_each_written(dev->store, bwsnap_io_mark_written,
					  dev);
}
