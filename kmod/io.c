// SPDX-License-Identifier: GPL-2.0
/*
 * The I/O path: what happens to a write on the tracked device, the worker
 * that makes COW copies and serves the snapshot device, and that device.
 *
 * A write reaches bwsnap_io_intercept() from the hook, in the submitter's
 * context: maybe atomic, maybe inside another submit_bio_noacct() (then
 * current->bio_list is active and any bio we submitted would only be queued
 * behind it). So the hook never sleeps and never does I/O. It marks the
 * written blocks in the tracking map, and in SNAPSHOT state, if any block
 * still needs its pre-snapshot content copied, it hands the bio to the
 * device's worker thread and returns; the bio is held until the copy is on
 * disk. Everything else passes on at once.
 *
 * The worker takes held writes and snapshot-device reads from one FIFO in
 * the order they arrived. For a write it copies each block that has no copy
 * yet (read origin, write COW slot, then mark it done) and then lets the
 * write go. For a read it serves each 4 KiB block from its COW copy if it
 * has one, else from the live device. Because a write to a block without a
 * copy is always held in that FIFO until its copy exists, and reads queued
 * before it are served first, a snapshot read never sees post-snapshot data.
 *
 * Treatment of special bios (tracked device):
 *  - empty flush: passes (it orders nothing we hold: held writes have not
 *    completed, so the flush need not cover them);
 *  - data with PREFLUSH/FUA: like any write, the flags stay on the bio;
 *  - discard / secure erase in ARMED or SNAPSHOT: completed at once without
 *    reaching the device (discard is advisory; passing it would destroy
 *    pre-snapshot data without a copy) and not tracked (nothing changed);
 *    in INCREMENTAL they pass and are tracked;
 *  - write-zeroes: a write (copy first, tracked);
 *  - blocks wholly inside the COW file (excl): never copied nor tracked.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/delay.h>
#include <linux/highmem.h>
#include <linux/kthread.h>
#include <linux/minmax.h>

#include "bwsnap.h"

/* Blocks [*first, *last] that @bio touches; false when none (or past end). */
static bool bwsnap_bio_blocks(struct bwsnap_dev *dev, struct bio *bio,
			      u64 *first, u64 *last)
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
static u64 bwsnap_mark_range(unsigned long *map, const unsigned long *excl,
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

/* Does any block in [first, last] lack a copy and lie outside the COW file? */
static bool bwsnap_range_needs_copy(struct bwsnap_dev *dev, u64 first,
				    u64 last)
{
	u64 b = first;

	while (b <= last) {
		u64 w = b / BITS_PER_LONG;
		unsigned int lo = b % BITS_PER_LONG;
		unsigned int hi = min_t(u64, last - w * BITS_PER_LONG,
					BITS_PER_LONG - 1);

		if (GENMASK(hi, lo) & ~(READ_ONCE(dev->done[w]) | dev->excl[w]))
			return true;
		b = (w + 1) * BITS_PER_LONG;
	}
	return false;
}

static bool bwsnap_block_needs_copy(struct bwsnap_dev *dev, u64 block)
{
	return !test_bit(block, dev->done) && !test_bit(block, dev->excl);
}

/*
 * A write bound for the tracked device (hook context: must not sleep, must
 * not submit). Caller holds rcu_read_lock(), which keeps @dev alive.
 */
enum bwsnap_verdict bwsnap_io_intercept(struct bwsnap_dev *dev,
					struct bio *bio)
{
	enum bwsnap_verdict verdict = BWSNAP_PASS;
	enum req_op op = bio_op(bio);
	bool discard = op == REQ_OP_DISCARD || op == REQ_OP_SECURE_ERASE;
	unsigned long flags;
	u64 first, last;

	if (!bwsnap_bio_blocks(dev, bio, &first, &last))
		return BWSNAP_PASS;

	spin_lock_irqsave(&dev->lock, flags);
	switch (dev->state) {
	case BWSNAP_STATE_ARMED:
	case BWSNAP_STATE_SNAPSHOT:
		if (discard) {
			verdict = BWSNAP_COMPLETED;
			break;
		}
		fallthrough;
	case BWSNAP_STATE_INCREMENTAL:
		atomic64_inc(&dev->tracked_writes);
		atomic64_add(bwsnap_mark_range(dev->tracking, dev->excl, first,
					       last),
			     &dev->tracking_blocks);
		if (dev->state == BWSNAP_STATE_SNAPSHOT && !dev->error &&
		    bwsnap_range_needs_copy(dev, first, last)) {
			/* The worker submits it later, from another context. */
			bio_clear_polled(bio);
			bio_list_add(&dev->queue, bio);
			verdict = BWSNAP_QUEUED;
		}
		break;
	default:
		break;
	}
	spin_unlock_irqrestore(&dev->lock, flags);

	if (verdict == BWSNAP_QUEUED)
		wake_up(&dev->worker_wq);
	else if (verdict == BWSNAP_COMPLETED)
		bio_endio(bio);
	return verdict;
}

/* ---- worker ---- */

static void bwsnap_io_sync_end(struct bio *bio)
{
	complete(bio->bi_private);
}

/*
 * Read or write @bytes at @sector of @bdev through @pages, and wait.
 * Goes past the hook (it is our own I/O). Worker context.
 */
static int bwsnap_io_rw(struct block_device *bdev, sector_t sector,
			struct page **pages, unsigned int bytes, blk_opf_t opf)
{
	DECLARE_COMPLETION_ONSTACK(done);
	unsigned int nr = DIV_ROUND_UP(bytes, PAGE_SIZE);
	struct bio *bio;
	unsigned int i;
	int err;

	bio = bio_alloc(bdev, nr, opf, GFP_NOIO);
	bio->bi_iter.bi_sector = sector;
	for (i = 0; i < nr; i++) {
		unsigned int len = min_t(unsigned int, bytes - i * PAGE_SIZE,
					 PAGE_SIZE);

		if (bio_add_page(bio, pages[i], len, 0) != len) {
			bio_put(bio);
			return -EIO;
		}
	}
	bio->bi_private = &done;
	bio->bi_end_io = bwsnap_io_sync_end;
	bwsnap_submit_passthrough(bio);
	wait_for_completion_io(&done);
	err = blk_status_to_errno(bio->bi_status);
	bio_put(bio);
	return err;
}

static bool bwsnap_io_snapshot_ok(struct bwsnap_dev *dev)
{
	bool ok;

	spin_lock_irq(&dev->lock);
	ok = dev->state == BWSNAP_STATE_SNAPSHOT && !dev->error;
	spin_unlock_irq(&dev->lock);
	return ok;
}

/* Fail the snapshot: from now on every snapshot read gets EIO. */
static void bwsnap_io_invalidate(struct bwsnap_dev *dev, int err)
{
	bool first;

	spin_lock_irq(&dev->lock);
	first = !dev->error;
	if (first)
		dev->error = err;
	spin_unlock_irq(&dev->lock);
	if (first)
		pr_err("snapshot %u of %pg invalidated: %d%s\n", dev->minor,
		       dev->bdev, err,
		       err == -ENOSPC ? " (COW file full)" : "");
}

/* Bytes of the device from @block on, at most @n blocks. */
static unsigned int bwsnap_io_span(struct bwsnap_dev *dev, u64 block, u32 n)
{
	u64 left = (dev->dev_sectors - block * BWSNAP_SECTORS_PER_BLOCK) <<
		   SECTOR_SHIFT;

	return min_t(u64, left, (u64)n << BWSNAP_BLOCK_SHIFT);
}

/* Copy blocks [first, first + n) into COW slots. Worker, state SNAPSHOT. */
static int bwsnap_io_copy(struct bwsnap_dev *dev, u64 first, u32 n)
{
	struct bwsnap_store *store = dev->store;
	unsigned int bytes = bwsnap_io_span(dev, first, n);
	unsigned int delay;
	u32 i, j;
	int err;

	/* A partial last block: keep the slot's tail deterministic. */
	if (bytes & (BWSNAP_BLOCK_SIZE - 1))
		zero_user(dev->bounce[n - 1], bytes & (BWSNAP_BLOCK_SIZE - 1),
			  BWSNAP_BLOCK_SIZE - (bytes & (BWSNAP_BLOCK_SIZE - 1)));
	err = bwsnap_io_rw(dev->bdev, first * BWSNAP_SECTORS_PER_BLOCK,
			   dev->bounce, bytes, REQ_OP_READ);
	if (err)
		return err;

	delay = READ_ONCE(bwsnap_fault_delay_cow_ms);
	if (delay) {
		bwsnap_fault_log(BWSNAP_FAULT_DELAY_COW, dev->minor, first);
		msleep(delay);
	}

	for (i = 0; i < n; i++) {
		err = store->ops->reserve(store, first + i, &dev->slot[i],
					  &dev->slot_sector[i]);
		if (err)
			return err;
		if (bwsnap_fault_fires(READ_ONCE(bwsnap_fault_corrupt_cow),
				       &dev->fault_corrupt_cnt)) {
			u8 *p = page_address(dev->bounce[i]);

			p[0] ^= 1;
			bwsnap_fault_log(BWSNAP_FAULT_CORRUPT_COW, dev->minor,
					 first + i);
		}
	}
	/* One write per run of physically consecutive slots. */
	for (i = 0; i < n; i = j) {
		for (j = i + 1; j < n; j++)
			if (dev->slot_sector[j] != dev->slot_sector[j - 1] +
			    BWSNAP_SECTORS_PER_BLOCK)
				break;
		err = bwsnap_io_rw(dev->bdev, dev->slot_sector[i],
				   dev->bounce + i,
				   (j - i) << BWSNAP_BLOCK_SHIFT,
				   REQ_OP_WRITE);
		if (err)
			return err;
	}
	for (i = 0; i < n; i++) {
		store->ops->commit(store, dev->slot[i], first + i);
		/* Only now may writes to the block pass the hook. */
		set_bit(first + i, dev->done);
	}
	atomic64_add(n, &dev->cow_copies);
	return 0;
}

/* A held write: copy what it is about to overwrite, then let it go. */
static void bwsnap_io_held_write(struct bwsnap_dev *dev, struct bio *bio)
{
	u64 first, last, b;
	int err = 0;

	if (bwsnap_bio_blocks(dev, bio, &first, &last) &&
	    bwsnap_io_snapshot_ok(dev)) {
		b = first;
		while (b <= last && !err) {
			u32 n = 0;

			while (b + n <= last && n < BWSNAP_RUN_BLOCKS &&
			       bwsnap_block_needs_copy(dev, b + n))
				n++;
			if (!n) {
				b++;
				continue;
			}
			err = bwsnap_io_copy(dev, b, n);
			b += n;
		}
		if (err)
			bwsnap_io_invalidate(dev, err);
	}
	/* The live volume keeps working whatever happened to the snapshot. */
	bwsnap_submit_passthrough(bio);
}

/* Decide where block @block of the snapshot comes from. */
static void bwsnap_io_plan(struct bwsnap_dev *dev, u64 block,
			   struct bwsnap_plan *p)
{
	sector_t sector;

	p->flags = 0;
	p->sector = block * BWSNAP_SECTORS_PER_BLOCK;
	if (!test_bit(block, dev->done)) {
		p->source = BWSNAP_SRC_LIVE;
		return;
	}
	if (!dev->store->ops->lookup(dev->store, block, &sector)) {
		/* done without a copy: a bug; never guess live data */
		WARN_ONCE(1, "bwsnap: block %llu marked done has no copy\n",
			  block);
		p->source = BWSNAP_SRC_ERROR;
		return;
	}
	if (bwsnap_fault_fires(READ_ONCE(bwsnap_fault_cow_read_live),
			       &dev->fault_read_live_cnt)) {
		bwsnap_fault_log(BWSNAP_FAULT_COW_READ_LIVE, dev->minor, block);
		p->source = BWSNAP_SRC_LIVE;
		p->flags = BWSNAP_TRACE_FAULT;
		return;
	}
	p->source = BWSNAP_SRC_COW;
	p->sector = sector;
}

/* Copy @len bytes from the bounce pages at @off into @bio at @iter. */
static void bwsnap_io_copy_out(struct bwsnap_dev *dev, struct bio *bio,
			       struct bvec_iter *iter, unsigned int off,
			       unsigned int len)
{
	while (len) {
		struct bio_vec bv = bio_iter_iovec(bio, *iter);
		unsigned int in_page = off & (PAGE_SIZE - 1);
		unsigned int n = min3(bv.bv_len, len,
				      (unsigned int)PAGE_SIZE - in_page);
		void *dst = bvec_kmap_local(&bv);

		memcpy(dst, page_address(dev->bounce[off >> PAGE_SHIFT]) +
			    in_page, n);
		kunmap_local(dst);
		bio_advance_iter_single(bio, iter, n);
		off += n;
		len -= n;
	}
}

/* A read of the snapshot device. */
static void bwsnap_io_snap_read(struct bwsnap_dev *dev, struct bio *bio)
{
	sector_t start = bio->bi_iter.bi_sector, end = bio_end_sector(bio);
	struct bvec_iter iter = bio->bi_iter;
	u64 b, last;
	int err = 0;

	if (!bio_sectors(bio)) {
		bio_endio(bio);
		return;
	}
	if (end > dev->dev_sectors) {
		bio_io_error(bio);
		return;
	}
	b = start / BWSNAP_SECTORS_PER_BLOCK;
	last = (end - 1) / BWSNAP_SECTORS_PER_BLOCK;
	if (!bwsnap_io_snapshot_ok(dev)) {
		err = -EIO;
		goto fail;
	}
	while (b <= last) {
		u32 n = min_t(u64, last - b + 1, BWSNAP_RUN_BLOCKS);
		u32 i, j;

		for (i = 0; i < n; i++)
			bwsnap_io_plan(dev, b + i, &dev->plan[i]);
		for (i = 0; i < n; i = j) {
			struct bwsnap_plan *p = &dev->plan[i];
			sector_t rs = (b + i) * BWSNAP_SECTORS_PER_BLOCK;
			sector_t from, to;
			unsigned int bytes;

			for (j = i + 1; j < n; j++)
				if (dev->plan[j].source != p->source ||
				    dev->plan[j].flags != p->flags ||
				    dev->plan[j].sector != dev->plan[j - 1].sector +
				    BWSNAP_SECTORS_PER_BLOCK)
					break;
			if (p->source == BWSNAP_SRC_ERROR) {
				b += i;
				err = -EIO;
				goto fail;
			}
			bwsnap_fault_pause(&bwsnap_fault_delay_read_ms,
					   BWSNAP_FAULT_DELAY_READ, dev->minor,
					   b + i);
			bytes = p->source == BWSNAP_SRC_COW ?
				(j - i) << BWSNAP_BLOCK_SHIFT :
				bwsnap_io_span(dev, b + i, j - i);
			err = bwsnap_io_rw(dev->bdev, p->sector, dev->bounce,
					   bytes, REQ_OP_READ);
			if (err) {
				b += i;
				goto fail;
			}
			from = max(rs, start);
			to = min_t(sector_t, rs + (j - i) * BWSNAP_SECTORS_PER_BLOCK,
				   end);
			bwsnap_io_copy_out(dev, bio, &iter,
					   (from - rs) << SECTOR_SHIFT,
					   (to - from) << SECTOR_SHIFT);
			bwsnap_trace_add(&dev->trace, b + i, j - i, p->source,
					 p->flags);
			atomic64_add(j - i, p->source == BWSNAP_SRC_COW ?
				     &dev->cow_reads : &dev->live_reads);
		}
		b += n;
	}
	bio_endio(bio);
	return;

fail:
	bwsnap_trace_add(&dev->trace, b, last - b + 1, BWSNAP_SRC_ERROR, 0);
	bio->bi_status = errno_to_blk_status(err);
	bio_endio(bio);
}

static bool bwsnap_io_idle(struct bwsnap_dev *dev)
{
	bool idle;

	spin_lock_irq(&dev->lock);
	idle = bio_list_empty(&dev->queue) && !dev->worker_busy;
	spin_unlock_irq(&dev->lock);
	return idle;
}

static int bwsnap_io_worker(void *data)
{
	struct bwsnap_dev *dev = data;
	struct bio_list batch;
	struct bio *bio;

	for (;;) {
		/* TASK_IDLE: an idle worker is no hung task. */
		wait_event_idle(dev->worker_wq,
				!bio_list_empty(&dev->queue) ||
				kthread_should_stop());
		spin_lock_irq(&dev->lock);
		batch = dev->queue;
		bio_list_init(&dev->queue);
		dev->worker_busy = !bio_list_empty(&batch);
		spin_unlock_irq(&dev->lock);
		if (bio_list_empty(&batch)) {
			/* Stop only with nothing held: every bio gets ended. */
			if (kthread_should_stop())
				break;
			continue;
		}
		while ((bio = bio_list_pop(&batch))) {
			if (bio->bi_bdev == dev->bdev)
				bwsnap_io_held_write(dev, bio);
			else
				bwsnap_io_snap_read(dev, bio);
			cond_resched();
		}
		spin_lock_irq(&dev->lock);
		dev->worker_busy = false;
		spin_unlock_irq(&dev->lock);
		wake_up_all(&dev->idle_wq);
	}
	return 0;
}

int bwsnap_io_worker_start(struct bwsnap_dev *dev)
{
	struct task_struct *task;
	int i;

	for (i = 0; i < BWSNAP_RUN_BLOCKS; i++) {
		dev->bounce[i] = alloc_page(GFP_KERNEL);
		if (!dev->bounce[i])
			goto err_pages;
	}
	task = kthread_run(bwsnap_io_worker, dev, "bwsnap%u", dev->minor);
	if (IS_ERR(task)) {
		pr_err("cannot start the worker of minor %u: %ld\n", dev->minor,
		       PTR_ERR(task));
		i = BWSNAP_RUN_BLOCKS;
		goto err_pages;
	}
	dev->worker = task;
	return 0;

err_pages:
	while (i--)
		__free_page(dev->bounce[i]);
	return -ENOMEM;
}

/* Drains the queue (held writes go on uncopied, reads fail) and stops. */
void bwsnap_io_worker_stop(struct bwsnap_dev *dev)
{
	int i;

	kthread_stop(dev->worker);
	dev->worker = NULL;
	for (i = 0; i < BWSNAP_RUN_BLOCKS; i++)
		__free_page(dev->bounce[i]);
}

/* Wait until everything queued so far has been processed. */
void bwsnap_io_worker_flush(struct bwsnap_dev *dev)
{
	wait_event(dev->idle_wq, bwsnap_io_idle(dev));
}

/* ---- the snapshot device ---- */

static void bwsnap_snap_submit_bio(struct bio *bio)
{
	struct bwsnap_dev *dev = bio->bi_bdev->bd_disk->private_data;
	unsigned long flags;

	if (bio_op(bio) != REQ_OP_READ) {
		if (op_is_flush(bio->bi_opf) && !bio_sectors(bio))
			bio_endio(bio);
		else
			bio_io_error(bio);
		return;
	}
	spin_lock_irqsave(&dev->lock, flags);
	bio_list_add(&dev->queue, bio);
	spin_unlock_irqrestore(&dev->lock, flags);
	wake_up(&dev->worker_wq);
}

static const struct block_device_operations bwsnap_snap_fops = {
	.owner = THIS_MODULE,
	.submit_bio = bwsnap_snap_submit_bio,
};

/* A gendisk for the coming snapshot; added at START. ctl mutex held. */
int bwsnap_io_disk_alloc(struct bwsnap_dev *dev)
{
	struct gendisk *disk = bwsnap_alloc_disk();

	if (IS_ERR(disk))
		return PTR_ERR(disk);
	disk->major = bwsnap_major;
	disk->first_minor = dev->minor;
	disk->minors = 1;
	disk->fops = &bwsnap_snap_fops;
	disk->private_data = dev;
	disk->flags |= GENHD_FL_NO_PART;
	snprintf(disk->disk_name, DISK_NAME_LEN, BWSNAP_DEV_PREFIX "%u",
		 dev->minor);
	set_capacity(disk, dev->dev_sectors);
	dev->disk = disk;
	return 0;
}

/*
 * Make the snapshot device visible. A gendisk whose add_disk() failed cannot
 * be added again: it is dropped, and a retry allocates a new one.
 */
int bwsnap_io_disk_add(struct bwsnap_dev *dev)
{
	int err;

	if (!dev->disk) {
		err = bwsnap_io_disk_alloc(dev);
		if (err)
			return err;
	}
	err = add_disk(dev->disk);
	if (err) {
		pr_err("cannot add %s: %d\n", dev->disk->disk_name, err);
		bwsnap_io_disk_free(dev);
		return err;
	}
	set_disk_ro(dev->disk, true);
	dev->disk_added = true;
	return 0;
}

/*
 * Remove and free the gendisk. The worker must be alive: del_gendisk() may
 * wait for reads it holds. ctl mutex held.
 */
void bwsnap_io_disk_free(struct bwsnap_dev *dev)
{
	if (!dev->disk)
		return;
	if (dev->disk_added)
		del_gendisk(dev->disk);
	put_disk(dev->disk);
	dev->disk = NULL;
	dev->disk_added = false;
}

/* ---- the COW file's blocks in the maps (ctl mutex held) ---- */

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
	atomic64_add(bwsnap_mark_range(dev->tracking, NULL, first, last),
		     &dev->tracking_blocks);
	spin_unlock_irq(&dev->lock);
}

/*
 * Mark every block holding a COW slot the store wrote as changed: those
 * writes went behind the filesystem's back, so the next incremental must
 * send them. The rest of the file was never written and still holds what
 * the snapshot showed.
 */
void bwsnap_io_mark_store(struct bwsnap_dev *dev)
{
	dev->store->ops->for_each_written(dev->store, bwsnap_io_mark_written,
					  dev);
}
