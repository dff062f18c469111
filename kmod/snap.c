// SPDX-License-Identifier: GPL-2.0
/*
 * The snapshot device /dev/bwsnapN: bio-based, read-only. No worker: each
 * read is split, in the reader's own context, into pieces by where its
 * blocks come from (a committed copy in a COW slot, or the live device),
 * and the pieces go straight to the tracked device as clones from the
 * device's own bio_set. The read completes when its last piece does.
 *
 * A block with a committed copy (cow bit) is read from its slot; any other
 * block from the origin, which still holds the snapshot's data because a
 * write to such a block is held until its copy is committed. The read is
 * registered in dev->reads, in order, before it plans any block: a copy
 * that commits afterwards holds its writes until every read registered
 * before the commit has completed (dm-snapshot's track_chunk), so a write
 * never overtakes a read that planned its block live.
 *
 * When the snapshot stops serving (closed, or failed) dev->gen changes
 * before any write is let through uncopied; a read that was registered
 * under another gen fails with EIO when it completes, whatever its pieces
 * read. So a read never returns data written after the snapshot ended
 * (unless the fault_teardown_open knob is set: then it does, on purpose, so
 * that the harness can show it finds that race).
 *
 * The read-source trace gets one event per block of a read, when it ends:
 * the piece's source, or error for every block of a failed read.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bio.h>
#include <linux/blkdev.h>

#include "bwsnap.h"

/* One snapshot-device read in flight. */
struct bwsnap_read {
	struct list_head node;		/* dev->reads: dev->lock */
	struct bwsnap_dev *dev;
	struct bio *parent;		/* the reader's bio */
	struct bio *pieces;		/* linked through bwsnap_piece.next */
	u64 seq;			/* registration order */
	u64 first, last;		/* blocks */
	u32 gen;			/* dev->gen at registration */
	atomic_t remaining;		/* pieces in flight, +1 while issuing */
	blk_status_t status;		/* an error of a piece */
};

/* Blocks a piece serves, all the same way. */
struct bwsnap_run {
	u64 block;
	u32 nr;
	u16 source;			/* enum bwsnap_source */
	u16 flags;			/* BWSNAP_TRACE_* */
};

/*
 * The front pad of every bio from dev->bs, ending with the bio itself. A
 * read's holder bio (never submitted) holds the read; each piece says which
 * blocks it serves and how, for the trace.
 */
struct bwsnap_piece {
	struct bwsnap_read rd;
	struct bio *next;
	struct bwsnap_run run;
	struct bio bio;			/* last: the bio_set's front pad ends here */
};

static inline struct bwsnap_piece *bwsnap_piece(struct bio *bio)
{
	return container_of(bio, struct bwsnap_piece, bio);
}

unsigned int bwsnap_snap_front_pad(void)
{
	return offsetof(struct bwsnap_piece, bio);
}

/* Where one block comes from: the plan of a run's next block. */
struct bwsnap_plan {
	bool valid;
	u64 block;
	sector_t sector;
	u16 source;
	u16 flags;
};

/*
 * Does a read registered before @before_seq still cover any of the blocks
 * [first, first + nr)? Caller holds dev->lock.
 */
bool __bwsnap_snap_reads_conflict(struct bwsnap_dev *dev, u64 first, u32 nr,
				  u64 before_seq)
{
	struct bwsnap_read *rd;

	lockdep_assert_held(&dev->lock);
	list_for_each_entry(rd, &dev->reads, node) {
		if (rd->seq >= before_seq)
			break;
		if (rd->first < first + nr && first <= rd->last)
			return true;
	}
	return false;
}

/* Plan @block. Caller holds dev->lock; the read is registered. */
static void __bwsnap_snap_plan_block(struct bwsnap_dev *dev, u64 block,
				     struct bwsnap_plan *p)
{
	sector_t sector;

	lockdep_assert_held(&dev->lock);
	p->valid = true;
	p->block = block;
	p->flags = 0;
	p->sector = block * BWSNAP_SECTORS_PER_BLOCK;
	if (!test_bit(block, dev->cow)) {
		p->source = BWSNAP_SRC_LIVE;
		return;
	}
	if (!dev->store->ops->lookup(dev->store, block, &sector)) {
		/* cow without a copy: a bug; never guess live data */
		WARN_ONCE(1, "bwsnap: block %llu marked cow has no copy\n", block);
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

/*
 * The run of blocks from @block (at most to @last, at most a copy run) read
 * the same way from consecutive sectors. @next carries a block planned but
 * not used by the previous run, so that a fault counts each block once.
 * A plan made under an earlier hold of the lock stays right: a live block
 * keeps the snapshot's data while this read is registered, a slot stays
 * until the device is drained.
 */
static void bwsnap_snap_plan(struct bwsnap_dev *dev, u64 block, u64 last,
			     struct bwsnap_plan *next, struct bwsnap_run *run,
			     sector_t *sector)
{
	spin_lock_irq(&dev->lock);
	if (!next->valid || next->block != block)
		__bwsnap_snap_plan_block(dev, block, next);
	run->block = block;
	run->nr = 1;
	run->source = next->source;
	run->flags = next->flags;
	*sector = next->sector;
	next->valid = false;
	while (run->nr < BWSNAP_RUN_BLOCKS && block + run->nr <= last &&
	       run->source != BWSNAP_SRC_ERROR) {
		__bwsnap_snap_plan_block(dev, block + run->nr, next);
		if (next->source != run->source || next->flags != run->flags ||
		    next->sector != *sector + run->nr * BWSNAP_SECTORS_PER_BLOCK)
			break;
		next->valid = false;
		run->nr++;
	}
	spin_unlock_irq(&dev->lock);
}

/* The read's last piece completed, or it was never issued. Any context. */
static void bwsnap_snap_read_done(struct bwsnap_read *rd)
{
	struct bwsnap_dev *dev = rd->dev;
	struct bio *parent = rd->parent;
	blk_status_t status = READ_ONCE(rd->status);
	struct bwsnap_piece *holder = container_of(rd, struct bwsnap_piece, rd);
	bool live = false, opened = false;
	struct bio *bio, *next;
	unsigned long flags;

	/* Every piece has completed: the list no longer changes. */
	for (bio = rd->pieces; bio; bio = bwsnap_piece(bio)->next)
		live |= bwsnap_piece(bio)->run.source == BWSNAP_SRC_LIVE;

	spin_lock_irqsave(&dev->lock, flags);
	/* The snapshot stopped serving while this read was in flight. */
	if (rd->gen != dev->gen) {
		/*
		 * fault_teardown_open re-opens the teardown race: the read
		 * returns what its live pieces read, which may have been
		 * written after the close. Eligible: reads that succeeded
		 * and read something live (a slot still holds the snapshot).
		 */
		if (!status && live &&
		    bwsnap_fault_fires(READ_ONCE(bwsnap_fault_teardown_open),
				       &dev->fault_teardown_cnt))
			opened = true;
		else
			status = BLK_STS_IOERR;
	}
	list_del(&rd->node);
	__bwsnap_copy_unblock(dev);
	spin_unlock_irqrestore(&dev->lock, flags);

	if (status)
		bwsnap_trace_add(&dev->trace, rd->first, rd->last - rd->first + 1,
				 BWSNAP_SRC_ERROR, 0);
	/* The pieces share the reader's pages: let them go before it does. */
	for (bio = rd->pieces; bio; bio = next) {
		struct bwsnap_piece *p = bwsnap_piece(bio);

		next = p->next;
		if (opened && p->run.source == BWSNAP_SRC_LIVE) {
			u32 i;

			for (i = 0; i < p->run.nr; i++)
				bwsnap_fault_log(BWSNAP_FAULT_TEARDOWN_OPEN,
						 dev->minor, p->run.block + i);
			p->run.flags |= BWSNAP_TRACE_FAULT;
		}
		if (!status) {
			bwsnap_trace_add(&dev->trace, p->run.block, p->run.nr,
					 p->run.source, p->run.flags);
			atomic64_add(p->run.nr, p->run.source == BWSNAP_SRC_COW ?
				     &dev->cow_reads : &dev->live_reads);
		}
		bio_put(bio);
	}
	parent->bi_status = status;
	bio_endio(parent);
	bio_put(&holder->bio);
	/* Last: the device may go once nothing is in flight. */
	bwsnap_io_inflight_dec(dev);
}

static void bwsnap_snap_read_put(struct bwsnap_read *rd)
{
	if (atomic_dec_and_test(&rd->remaining))
		bwsnap_snap_read_done(rd);
}

static void bwsnap_snap_piece_end(struct bio *bio)
{
	struct bwsnap_read *rd = bio->bi_private;

	if (bio->bi_status)
		WRITE_ONCE(rd->status, bio->bi_status);
	bwsnap_snap_read_put(rd);
}

/* Fail a read that cannot be served at all. */
static void bwsnap_snap_refuse(struct bwsnap_dev *dev, struct bio *bio)
{
	sector_t end = min_t(sector_t, bio_end_sector(bio), dev->dev_sectors);
	u64 first = bio->bi_iter.bi_sector / BWSNAP_SECTORS_PER_BLOCK;

	if (end > bio->bi_iter.bi_sector)
		bwsnap_trace_add(&dev->trace, first,
				 (end - 1) / BWSNAP_SECTORS_PER_BLOCK - first + 1,
				 BWSNAP_SRC_ERROR, 0);
	bio_io_error(bio);
}

/*
 * A read of the snapshot device, in the reader's context: may sleep for
 * memory, unless the reader asked not to wait (REQ_NOWAIT).
 */
static void bwsnap_snap_read(struct bwsnap_dev *dev, struct bio *bio)
{
	sector_t start = bio->bi_iter.bi_sector, end = bio_end_sector(bio);
	gfp_t gfp = bio->bi_opf & REQ_NOWAIT ? GFP_NOWAIT : GFP_NOIO;
	struct bwsnap_plan next = { .valid = false };
	struct bwsnap_piece *holder;
	struct bwsnap_read *rd;
	struct bio *hold, **tail;
	sector_t pos;

	/* A bare bio from our pool holds the read (see bwsnap_piece). */
	hold = bio_alloc_bioset(NULL, 0, REQ_OP_READ, gfp, &dev->bs);
	if (!hold) {
		bio_wouldblock_error(bio);
		return;
	}
	holder = bwsnap_piece(hold);
	rd = &holder->rd;
	rd->dev = dev;
	rd->parent = bio;
	rd->pieces = NULL;
	rd->first = start / BWSNAP_SECTORS_PER_BLOCK;
	rd->last = (end - 1) / BWSNAP_SECTORS_PER_BLOCK;
	rd->status = BLK_STS_OK;
	atomic_set(&rd->remaining, 1);

	spin_lock_irq(&dev->lock);
	if (dev->state != BWSNAP_STATE_SNAPSHOT || dev->error) {
		spin_unlock_irq(&dev->lock);
		bio_put(hold);
		bwsnap_snap_refuse(dev, bio);
		return;
	}
	rd->gen = dev->gen;
	rd->seq = dev->read_seq++;
	list_add_tail(&rd->node, &dev->reads);
	__bwsnap_io_inflight_inc(dev);
	spin_unlock_irq(&dev->lock);

	tail = &rd->pieces;
	for (pos = start; pos < end;) {
		struct bwsnap_piece *p;
		struct bwsnap_run run;
		sector_t sector, run_end;
		struct bio *clone;

		bwsnap_snap_plan(dev, pos / BWSNAP_SECTORS_PER_BLOCK, rd->last,
				 &next, &run, &sector);
		run_end = min_t(sector_t, end,
				(run.block + run.nr) * BWSNAP_SECTORS_PER_BLOCK);
		if (run.source == BWSNAP_SRC_ERROR) {
			WRITE_ONCE(rd->status, BLK_STS_IOERR);
			pos = run_end;
			continue;
		}
		clone = bio_alloc_clone(dev->bdev, bio, gfp, &dev->bs);
		if (!clone) {
			WRITE_ONCE(rd->status, BLK_STS_AGAIN);
			break;
		}
		bio_trim(clone, pos - start, run_end - pos);
		clone->bi_iter.bi_sector = sector +
			(pos - run.block * BWSNAP_SECTORS_PER_BLOCK);
		bio_clear_polled(clone);
		clone->bi_end_io = bwsnap_snap_piece_end;
		clone->bi_private = rd;
		p = bwsnap_piece(clone);
		p->next = NULL;
		p->run = run;
		*tail = clone;
		tail = &p->next;
		atomic_inc(&rd->remaining);
		pos = run_end;
	}

	bwsnap_fault_pause(&bwsnap_fault_delay_read_ms, BWSNAP_FAULT_DELAY_READ,
			   dev->minor, rd->first);
	/*
	 * current->bio_list is active here: these only queue, and go down
	 * after we return. Nothing completes before the submission ref drops.
	 */
	if (!READ_ONCE(rd->status)) {
		struct bio *clone, *after;

		for (clone = rd->pieces; clone; clone = after) {
			after = bwsnap_piece(clone)->next;
			bwsnap_submit_passthrough(clone);
		}
	} else {
		/* Never issued: their references go with the read. */
		atomic_set(&rd->remaining, 1);
	}
	bwsnap_snap_read_put(rd);
}

static void bwsnap_snap_submit_bio(struct bio *bio)
{
	struct bwsnap_dev *dev = bio->bi_bdev->bd_disk->private_data;

	if (bio_op(bio) != REQ_OP_READ) {
		/* Read-only; an empty flush has nothing to order. */
		if (op_is_flush(bio->bi_opf) && !bio_sectors(bio))
			bio_endio(bio);
		else
			bio_io_error(bio);
		return;
	}
	if (!bio_sectors(bio)) {
		bio_endio(bio);
		return;
	}
	if (bio_end_sector(bio) > dev->dev_sectors) {
		bio_io_error(bio);
		return;
	}
	bwsnap_snap_read(dev, bio);
}

static const struct block_device_operations bwsnap_snap_fops = {
	.owner = THIS_MODULE,
	.submit_bio = bwsnap_snap_submit_bio,
};

/* A gendisk for the coming snapshot; added at START. ctl_lock held. */
int bwsnap_snap_disk_alloc(struct bwsnap_dev *dev)
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
 * Make the snapshot device visible (the state is SNAPSHOT already). A
 * gendisk whose add_disk() failed cannot be added again: it is dropped,
 * and a later START allocates a new one. ctl_lock held.
 */
int bwsnap_snap_disk_add(struct bwsnap_dev *dev)
{
	int err;

	if (!dev->disk) {
		err = bwsnap_snap_disk_alloc(dev);
		if (err)
			return err;
	}
	err = add_disk(dev->disk);
	if (err) {
		pr_err("cannot add %s: %d\n", dev->disk->disk_name, err);
		bwsnap_snap_disk_free(dev);
		return err;
	}
	set_disk_ro(dev->disk, true);
	dev->disk_added = true;
	return 0;
}

/*
 * Remove and free the gendisk. Reads in flight go on (they hold inflight
 * counts and fail by gen if the snapshot has closed). ctl_lock held.
 */
void bwsnap_snap_disk_free(struct bwsnap_dev *dev)
{
	if (!dev->disk)
		return;
	if (dev->disk_added)
		del_gendisk(dev->disk);
	put_disk(dev->disk);
	dev->disk = NULL;
	dev->disk_added = false;
}
