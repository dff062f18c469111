// SPDX-License-Identifier: GPL-2.0
/*
 * The copy engine: copy-on-write of the blocks a held write is about to
 * overwrite, along dm-snapshot's lines.
 *
 * A pending copy (struct bwsnap_copy) covers a run of blocks inside one
 * aligned group of BWSNAP_RUN_BLOCKS. It sits in dev->copy_hash (keyed by
 * group) from the moment a write needs it until the writes it holds are let
 * go; its blocks have their dev->pending bit set all that time. The hook
 * (io.c) lets a write pass when each block it writes is committed (cow) and
 * not pending; else it attaches the write to the first pending copy it
 * meets, makes copies for the blocks that have none, and holds the write.
 * When the copy the write waits on is done, the write is looked at again:
 * attached to the next one, or let go.
 *
 * A copy goes through these steps, each started by the previous one's
 * completion, never by a thread that waits:
 *
 *   start   take bounce pages (the cap on copies in flight: a copy without
 *           pages waits in dev->copy_wait, in order), read the origin
 *           (from the hook's context, or the work queue when that cannot
 *           allocate without waiting);
 *   write   on the read's completion: reserve slots, write them, one bio
 *           per physically contiguous run of slots;
 *   commit  on the last slot write's completion: commit the slots in the
 *           store, set the blocks' cow bits. From now on snapshot reads of
 *           them go to the slots. If a snapshot read that began before the
 *           commit is still reading one of the blocks from the origin (it
 *           was planned live), the copy waits on dev->copy_blocked until
 *           that read completes (dm-snapshot's track_chunk): the held
 *           writes must not overtake it;
 *   finish  clear the pending bits, leave the hash, let the held writes go.
 *
 * Completions run in interrupt context, where submitting may sleep for a
 * tag: each one queues the next step on dev->wq (bound to the completing
 * CPU, high priority), as dm-kcopyd does with its own thread.
 *
 * Copy entries come from a mempool. The hook allocates with GFP_NOWAIT;
 * when that fails, the write goes to dev->copy_nomem and the device's
 * nomem work, on a queue of its own, allocates with GFP_NOIO (it may sleep
 * until a copy completes and frees an entry).
 *
 * Closing and invalidating (io.c) take every held write out of every copy
 * at once; a copy with I/O in flight then finds itself out of the hash at
 * its next step and just ends.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bio.h>
#include <linux/hash.h>
#include <linux/highmem.h>
#include <linux/slab.h>

#include "bwsnap.h"

enum bwsnap_copy_flags {
	BWSNAP_CF_HASHED	= 1 << 0,	/* in copy_hash, pending bits set */
	BWSNAP_CF_PAGES		= 1 << 1,	/* holds its bounce pages */
	BWSNAP_CF_BLOCKED	= 1 << 2,	/* committed, on copy_blocked */
	BWSNAP_CF_WAITING	= 1 << 3,	/* on copy_wait, never started */
};

enum bwsnap_copy_step {
	BWSNAP_STEP_READ,	/* read the origin (allocating may sleep) */
	BWSNAP_STEP_WRITE,	/* the read completed: write the slots */
	BWSNAP_STEP_COMMIT,	/* the slot writes completed */
	BWSNAP_STEP_FINISH,	/* let the held writes go */
};

struct bwsnap_copy {
	struct hlist_node node;		/* dev->copy_hash: dev->lock */
	/* dev->copy_wait, dev->copy_blocked or a caller's start list: dev->lock */
	struct list_head list;
	struct bwsnap_dev *dev;
	u64 first;			/* first block */
	u32 nr;				/* blocks, inside one group */
	u32 flags;			/* dev->lock: BWSNAP_CF_* */
	u64 commit_seq;			/* dev->lock: reads registered before commit */
	struct bio_list writes;		/* dev->lock: held writes waiting for it */
	/*
	 * Owned by the copy's current step: only one runs at a time, and a
	 * step hands over to the next through a completion and the work queue.
	 */
	enum bwsnap_copy_step step;
	bool delayed;			/* fault_delay_cow_ms applied */
	blk_status_t status;		/* an I/O error of the copy */
	atomic_t ios;			/* slot writes in flight, +1 while issuing */
	struct delayed_work work;
	struct page *pages[BWSNAP_RUN_BLOCKS];
	u64 slot[BWSNAP_RUN_BLOCKS];
	sector_t sector[BWSNAP_RUN_BLOCKS];
};

static void bwsnap_copy_work(struct work_struct *work);

static unsigned int bwsnap_copy_bucket(u64 block)
{
	return hash_64(block / BWSNAP_RUN_BLOCKS, BWSNAP_COPY_HASH_BITS);
}

/* The pending copy covering @block. Caller holds dev->lock. */
static struct bwsnap_copy *__bwsnap_copy_find(struct bwsnap_dev *dev,
					      u64 block)
{
	struct bwsnap_copy *copy;

	lockdep_assert_held(&dev->lock);
	hlist_for_each_entry(copy, &dev->copy_hash[bwsnap_copy_bucket(block)],
			     node)
		if (block >= copy->first && block < copy->first + copy->nr)
			return copy;
	return NULL;
}

/* Does @block need a new copy? Caller holds dev->lock. */
static bool __bwsnap_copy_needed(struct bwsnap_dev *dev, u64 block)
{
	return !test_bit(block, dev->excl) && !test_bit(block, dev->cow) &&
	       !test_bit(block, dev->pending);
}

/* Give @copy its bounce pages. Caller holds dev->lock; enough are free. */
static void __bwsnap_copy_take_pages(struct bwsnap_dev *dev,
				     struct bwsnap_copy *copy)
{
	u32 i;

	for (i = 0; i < copy->nr; i++)
		copy->pages[i] = dev->pages[--dev->nr_pages];
	copy->flags |= BWSNAP_CF_PAGES;
}

/*
 * Return @copy's pages (if it holds them) and admit the copies waiting for
 * pages that now fit, in order, onto @start. Caller holds dev->lock.
 */
static void __bwsnap_copy_put_pages(struct bwsnap_dev *dev,
				    struct bwsnap_copy *copy,
				    struct list_head *start)
{
	struct bwsnap_copy *w, *tmp;
	u32 i;

	lockdep_assert_held(&dev->lock);
	if (copy && copy->flags & BWSNAP_CF_PAGES) {
		for (i = 0; i < copy->nr; i++)
			dev->pages[dev->nr_pages++] = copy->pages[i];
		copy->flags &= ~BWSNAP_CF_PAGES;
	}
	list_for_each_entry_safe(w, tmp, &dev->copy_wait, list) {
		if (w->nr > dev->nr_pages)
			break;
		__bwsnap_copy_take_pages(dev, w);
		w->flags &= ~BWSNAP_CF_WAITING;
		list_move_tail(&w->list, start);
	}
}

/* Take @copy out of the hash, clear its pending bits. Caller holds dev->lock. */
static void __bwsnap_copy_unhash(struct bwsnap_dev *dev,
				 struct bwsnap_copy *copy)
{
	lockdep_assert_held(&dev->lock);
	hlist_del_init(&copy->node);
	bitmap_clear(dev->pending, copy->first, copy->nr);
	copy->flags &= ~BWSNAP_CF_HASHED;
}

struct bwsnap_copy *bwsnap_copy_alloc(struct bwsnap_dev *dev, gfp_t gfp)
{
	return mempool_alloc(&dev->copy_pool, gfp);
}

void bwsnap_copy_put_spare(struct bwsnap_dev *dev, struct bwsnap_copy *spare)
{
	if (spare)
		mempool_free(spare, &dev->copy_pool);
}

/*
 * A new pending copy of blocks [first, first + nr). Caller holds dev->lock.
 * It starts at once (onto @start) when pages are free and nobody waits for
 * them before it.
 */
static void __bwsnap_copy_add(struct bwsnap_dev *dev, struct bwsnap_copy *copy,
			      u64 first, u32 nr, struct list_head *start)
{
	copy->dev = dev;
	copy->first = first;
	copy->nr = nr;
	copy->flags = BWSNAP_CF_HASHED;
	copy->step = BWSNAP_STEP_READ;
	copy->delayed = false;
	copy->status = BLK_STS_OK;
	bio_list_init(&copy->writes);
	INIT_DELAYED_WORK(&copy->work, bwsnap_copy_work);
	hlist_add_head(&copy->node, &dev->copy_hash[bwsnap_copy_bucket(first)]);
	bitmap_set(dev->pending, first, nr);
	__bwsnap_io_inflight_inc(dev);
	if (list_empty(&dev->copy_wait) && dev->nr_pages >= nr) {
		__bwsnap_copy_take_pages(dev, copy);
		list_add_tail(&copy->list, start);
	} else {
		copy->flags |= BWSNAP_CF_WAITING;
		list_add_tail(&copy->list, &dev->copy_wait);
	}
}

/*
 * Hold @bio, a write of blocks [first, last] in SNAPSHOT, until each block
 * it writes has its copy, or let it pass: attach it to the first pending
 * copy of its blocks, and make copies for the blocks that have none (all of
 * them now, so that they run in parallel). New copies that can start go to
 * @start. *@spare, when given, is an entry to use before allocating. When
 * no entry can be had without waiting, the write goes to the nomem work.
 * Caller holds dev->lock; never sleeps.
 */
enum bwsnap_verdict __bwsnap_copy_hold(struct bwsnap_dev *dev, struct bio *bio,
				       u64 first, u64 last,
				       struct bwsnap_copy **spare,
				       struct list_head *start)
{
	struct bwsnap_copy *attach = NULL, *copy;
	u64 b = first;

	lockdep_assert_held(&dev->lock);
	if (dev->state != BWSNAP_STATE_SNAPSHOT || dev->error)
		return BWSNAP_PASS;
	while (b <= last) {
		u64 group_last;
		u32 n;

		if (test_bit(b, dev->pending)) {
			if (!attach)
				attach = __bwsnap_copy_find(dev, b);
			b++;
			continue;
		}
		if (!__bwsnap_copy_needed(dev, b)) {
			b++;
			continue;
		}
		group_last = min(last, round_down(b, BWSNAP_RUN_BLOCKS) +
				 BWSNAP_RUN_BLOCKS - 1);
		for (n = 1; b + n <= group_last && __bwsnap_copy_needed(dev, b + n);
		     n++)
			;
		if (spare && *spare) {
			copy = *spare;
			*spare = NULL;
		} else {
			copy = mempool_alloc(&dev->copy_pool, GFP_NOWAIT | __GFP_NOWARN);
		}
		if (!copy)
			break;
		__bwsnap_copy_add(dev, copy, b, n, start);
		if (!attach)
			attach = copy;
		b += n;
	}
	if (attach) {
		bio_list_add(&attach->writes, bio);
		return BWSNAP_HELD;
	}
	if (b > last)
		return BWSNAP_PASS;
	/* No entry without waiting: the nomem work gets one. */
	bio_list_add(&dev->copy_nomem, bio);
	__bwsnap_io_inflight_inc(dev);
	queue_work(dev->alloc_wq, &dev->nomem_work);
	return BWSNAP_HELD;
}

/* Look at a held write again. Caller holds dev->lock. */
static enum bwsnap_verdict __bwsnap_copy_rehold(struct bwsnap_dev *dev,
						struct bio *bio,
						struct bwsnap_copy **spare,
						struct list_head *start)
{
	u64 first, last;

	if (!bwsnap_io_bio_blocks(dev, bio, &first, &last))
		return BWSNAP_PASS;
	return __bwsnap_copy_hold(dev, bio, first, last, spare, start);
}

/* ---- the steps ---- */

static void bwsnap_copy_queue(struct bwsnap_copy *copy,
			      enum bwsnap_copy_step step, unsigned long delay)
{
	copy->step = step;
	queue_delayed_work(copy->dev->wq, &copy->work, delay);
}

static void bwsnap_copy_read_end(struct bio *bio)
{
	struct bwsnap_copy *copy = bio->bi_private;

	if (bio->bi_status)
		copy->status = bio->bi_status;
	bio_put(bio);
	bwsnap_copy_queue(copy, BWSNAP_STEP_WRITE, 0);
}

/* Bytes of the device from @block on, at most @n blocks. */
static unsigned int bwsnap_copy_span(struct bwsnap_dev *dev, u64 block, u32 n)
{
	u64 left = (dev->dev_sectors - block * BWSNAP_SECTORS_PER_BLOCK) <<
		   SECTOR_SHIFT;

	return min_t(u64, left, (u64)n << BWSNAP_BLOCK_SHIFT);
}

/*
 * Read the origin into the bounce pages. @gfp 0: do it from the work queue.
 * Any context that may submit; never waits when @gfp does not.
 */
static void bwsnap_copy_read(struct bwsnap_copy *copy, gfp_t gfp)
{
	struct bwsnap_dev *dev = copy->dev;
	unsigned int bytes = bwsnap_copy_span(dev, copy->first, copy->nr);
	struct bio *bio = NULL;
	u32 i;

	if (gfp)
		bio = bio_alloc_bioset(dev->bdev, copy->nr, REQ_OP_READ, gfp,
				       &dev->bs);
	if (!bio) {
		bwsnap_copy_queue(copy, BWSNAP_STEP_READ, 0);
		return;
	}
	/* A partial last block of the device: keep the slot's tail zero. */
	if (bytes & (BWSNAP_BLOCK_SIZE - 1))
		zero_user(copy->pages[copy->nr - 1],
			  bytes & (BWSNAP_BLOCK_SIZE - 1),
			  BWSNAP_BLOCK_SIZE - (bytes & (BWSNAP_BLOCK_SIZE - 1)));
	for (i = 0; i < copy->nr; i++)
		__bio_add_page(bio, copy->pages[i],
			       min_t(unsigned int, bytes - i * PAGE_SIZE,
				     PAGE_SIZE), 0);
	bio->bi_iter.bi_sector = copy->first * BWSNAP_SECTORS_PER_BLOCK;
	bio->bi_end_io = bwsnap_copy_read_end;
	bio->bi_private = copy;
	bwsnap_submit_passthrough(bio);
}

/* Start each copy on @start (they hold their pages). */
void bwsnap_copy_start_list(struct list_head *start, gfp_t gfp)
{
	struct bwsnap_copy *copy, *tmp;

	list_for_each_entry_safe(copy, tmp, start, list) {
		list_del_init(&copy->list);
		bwsnap_copy_read(copy, gfp);
	}
}

/*
 * The copy is over (done, abandoned or failed): let its writes go (looked
 * at again first, when it is still in the hash), return its pages and its
 * entry. Work context.
 */
static void bwsnap_copy_finish(struct bwsnap_copy *copy)
{
	struct bwsnap_dev *dev = copy->dev;
	struct bio_list writes, pass;
	LIST_HEAD(start);
	struct bio *bio;

	bio_list_init(&pass);
	spin_lock_irq(&dev->lock);
	if (copy->flags & BWSNAP_CF_HASHED) {
		__bwsnap_copy_unhash(dev, copy);
		writes = copy->writes;
		bio_list_init(&copy->writes);
		while ((bio = bio_list_pop(&writes)))
			if (__bwsnap_copy_rehold(dev, bio, NULL, &start) ==
			    BWSNAP_PASS)
				bio_list_add(&pass, bio);
	}
	__bwsnap_copy_put_pages(dev, copy, &start);
	mempool_free(copy, &dev->copy_pool);
	spin_unlock_irq(&dev->lock);
	while ((bio = bio_list_pop(&pass)))
		bwsnap_submit_passthrough(bio);
	bwsnap_copy_start_list(&start, GFP_NOIO);
	/* Last: every write it let go is in the block layer's hands. */
	bwsnap_io_inflight_dec(dev);
}

/* The copy failed: fail the snapshot (it lets every held write go). */
static void bwsnap_copy_fail(struct bwsnap_copy *copy, int err)
{
	bwsnap_io_invalidate(copy->dev, err);
	bwsnap_copy_finish(copy);
}

static void bwsnap_copy_commit(struct bwsnap_copy *copy)
{
	struct bwsnap_dev *dev = copy->dev;
	struct bwsnap_store *store = dev->store;
	LIST_HEAD(start);
	bool blocked;
	u32 i;

	if (copy->status) {
		bwsnap_copy_fail(copy, blk_status_to_errno(copy->status));
		return;
	}
	spin_lock_irq(&dev->lock);
	/*
	 * The slots hold the blocks' pre-snapshot data either way: committed
	 * even when the snapshot stopped meanwhile, so that the store's usage
	 * counts every slot written.
	 */
	for (i = 0; i < copy->nr; i++)
		store->ops->commit(store, copy->slot[i], copy->first + i);
	if (!(copy->flags & BWSNAP_CF_HASHED)) {
		spin_unlock_irq(&dev->lock);
		bwsnap_copy_finish(copy);
		return;
	}
	for (i = 0; i < copy->nr; i++)
		__set_bit(copy->first + i, dev->cow);
	atomic64_add(copy->nr, &dev->cow_copies);
	__bwsnap_copy_put_pages(dev, copy, &start);
	copy->commit_seq = dev->read_seq;
	blocked = __bwsnap_snap_reads_conflict(dev, copy->first, copy->nr,
					       copy->commit_seq);
	if (blocked) {
		copy->flags |= BWSNAP_CF_BLOCKED;
		list_add_tail(&copy->list, &dev->copy_blocked);
	}
	spin_unlock_irq(&dev->lock);
	bwsnap_copy_start_list(&start, GFP_NOIO);
	if (!blocked)
		bwsnap_copy_finish(copy);
}

static void bwsnap_copy_write_end(struct bio *bio)
{
	struct bwsnap_copy *copy = bio->bi_private;

	/* Several slot writes may fail at once: any error will do. */
	if (bio->bi_status)
		WRITE_ONCE(copy->status, bio->bi_status);
	bio_put(bio);
	if (atomic_dec_and_test(&copy->ios))
		bwsnap_copy_queue(copy, BWSNAP_STEP_COMMIT, 0);
}

/* Reserve a slot per block and write them. Work context. */
static void bwsnap_copy_write(struct bwsnap_copy *copy)
{
	struct bwsnap_dev *dev = copy->dev;
	struct bwsnap_store *store = dev->store;
	unsigned int delay = READ_ONCE(bwsnap_fault_delay_cow_ms);
	int err = 0;
	u32 i, j;

	if (copy->status) {
		bwsnap_copy_fail(copy, blk_status_to_errno(copy->status));
		return;
	}
	if (delay && !copy->delayed) {
		copy->delayed = true;
		bwsnap_fault_log(BWSNAP_FAULT_DELAY_COW, dev->minor, copy->first);
		bwsnap_copy_queue(copy, BWSNAP_STEP_WRITE, msecs_to_jiffies(delay));
		return;
	}
	spin_lock_irq(&dev->lock);
	if (!(copy->flags & BWSNAP_CF_HASHED)) {
		spin_unlock_irq(&dev->lock);
		bwsnap_copy_finish(copy);
		return;
	}
	for (i = 0; i < copy->nr && !err; i++) {
		err = store->ops->reserve(store, copy->first + i, &copy->slot[i],
					  &copy->sector[i]);
		if (!err && bwsnap_fault_fires(READ_ONCE(bwsnap_fault_corrupt_cow),
					       &dev->fault_corrupt_cnt)) {
			u8 *p = page_address(copy->pages[i]);

			p[0] ^= 1;
			bwsnap_fault_log(BWSNAP_FAULT_CORRUPT_COW, dev->minor,
					 copy->first + i);
		}
	}
	spin_unlock_irq(&dev->lock);
	if (err) {
		bwsnap_copy_fail(copy, err);
		return;
	}
	/* One write per run of physically consecutive slots. */
	atomic_set(&copy->ios, 1);
	for (i = 0; i < copy->nr; i = j) {
		struct bio *bio;

		for (j = i + 1; j < copy->nr; j++)
			if (copy->sector[j] != copy->sector[j - 1] +
			    BWSNAP_SECTORS_PER_BLOCK)
				break;
		bio = bio_alloc_bioset(dev->bdev, j - i, REQ_OP_WRITE, GFP_NOIO,
				       &dev->bs);
		bio->bi_iter.bi_sector = copy->sector[i];
		while (i < j)
			__bio_add_page(bio, copy->pages[i++], PAGE_SIZE, 0);
		bio->bi_end_io = bwsnap_copy_write_end;
		bio->bi_private = copy;
		atomic_inc(&copy->ios);
		bwsnap_submit_passthrough(bio);
	}
	if (atomic_dec_and_test(&copy->ios))
		bwsnap_copy_commit(copy);
}

static void bwsnap_copy_work(struct work_struct *work)
{
	struct bwsnap_copy *copy =
		container_of(to_delayed_work(work), struct bwsnap_copy, work);

	switch (copy->step) {
	case BWSNAP_STEP_READ:
		bwsnap_copy_read(copy, GFP_NOIO);
		break;
	case BWSNAP_STEP_WRITE:
		bwsnap_copy_write(copy);
		break;
	case BWSNAP_STEP_COMMIT:
		bwsnap_copy_commit(copy);
		break;
	case BWSNAP_STEP_FINISH:
		bwsnap_copy_finish(copy);
		break;
	}
}

/*
 * A snapshot read ended: let the committed copies that no longer wait for
 * an older read finish. Caller holds dev->lock; any context.
 */
void __bwsnap_copy_unblock(struct bwsnap_dev *dev)
{
	struct bwsnap_copy *copy, *tmp;

	lockdep_assert_held(&dev->lock);
	list_for_each_entry_safe(copy, tmp, &dev->copy_blocked, list) {
		if (__bwsnap_snap_reads_conflict(dev, copy->first, copy->nr,
						 copy->commit_seq))
			continue;
		list_del_init(&copy->list);
		copy->flags &= ~BWSNAP_CF_BLOCKED;
		bwsnap_copy_queue(copy, BWSNAP_STEP_FINISH, 0);
	}
}

/*
 * Writes that waited for a copy entry: get one, allowed to wait for a
 * copy to free one (GFP_NOIO from the mempool), and look at them again.
 */
void bwsnap_copy_nomem_work(struct work_struct *work)
{
	struct bwsnap_dev *dev = container_of(work, struct bwsnap_dev,
					      nomem_work);
	struct bwsnap_copy *spare = NULL;

	for (;;) {
		enum bwsnap_verdict verdict;
		LIST_HEAD(start);
		struct bio *bio;

		if (!spare)
			spare = bwsnap_copy_alloc(dev, GFP_NOIO);
		spin_lock_irq(&dev->lock);
		bio = bio_list_pop(&dev->copy_nomem);
		if (!bio) {
			spin_unlock_irq(&dev->lock);
			break;
		}
		verdict = __bwsnap_copy_rehold(dev, bio, &spare, &start);
		spin_unlock_irq(&dev->lock);
		if (verdict == BWSNAP_PASS)
			bwsnap_submit_passthrough(bio);
		bwsnap_copy_start_list(&start, GFP_NOIO);
		bwsnap_io_inflight_dec(dev);
	}
	bwsnap_copy_put_spare(dev, spare);
}

/*
 * The snapshot stops serving: every held write goes to @writes, every copy
 * leaves the hash; those with no I/O in flight (waiting for pages, or
 * blocked after their commit) go to @idle for bwsnap_copy_free_idle().
 * Caller holds dev->lock.
 */
void __bwsnap_copy_stop(struct bwsnap_dev *dev, struct bio_list *writes,
			struct list_head *idle)
{
	struct bwsnap_copy *copy;
	struct hlist_node *tmp;
	struct bio *bio;
	u32 i;

	lockdep_assert_held(&dev->lock);
	for (i = 0; i < ARRAY_SIZE(dev->copy_hash); i++) {
		hlist_for_each_entry_safe(copy, tmp, &dev->copy_hash[i], node) {
			bio_list_merge(writes, &copy->writes);
			bio_list_init(&copy->writes);
			__bwsnap_copy_unhash(dev, copy);
			if (copy->flags &
			    (BWSNAP_CF_BLOCKED | BWSNAP_CF_WAITING)) {
				copy->flags &= ~(BWSNAP_CF_BLOCKED |
						 BWSNAP_CF_WAITING);
				list_move_tail(&copy->list, idle);
			}
		}
	}
	while ((bio = bio_list_pop(&dev->copy_nomem))) {
		bio_list_add(writes, bio);
		__bwsnap_io_inflight_dec(dev);
	}
}

/* Free the copies __bwsnap_copy_stop() found idle. Process context. */
void bwsnap_copy_free_idle(struct bwsnap_dev *dev, struct list_head *idle)
{
	struct bwsnap_copy *copy, *tmp;

	list_for_each_entry_safe(copy, tmp, idle, list) {
		list_del(&copy->list);
		spin_lock_irq(&dev->lock);
		mempool_free(copy, &dev->copy_pool);
		__bwsnap_io_inflight_dec(dev);
		spin_unlock_irq(&dev->lock);
	}
}

int bwsnap_copy_init(struct bwsnap_dev *dev)
{
	int err;
	u32 i;

	for (i = 0; i < ARRAY_SIZE(dev->copy_hash); i++)
		INIT_HLIST_HEAD(&dev->copy_hash[i]);
	INIT_LIST_HEAD(&dev->copy_wait);
	INIT_LIST_HEAD(&dev->copy_blocked);
	bio_list_init(&dev->copy_nomem);
	INIT_WORK(&dev->nomem_work, bwsnap_copy_nomem_work);
	dev->pages = kcalloc(BWSNAP_COPY_PAGES, sizeof(*dev->pages),
			     GFP_KERNEL);
	if (!dev->pages)
		return -ENOMEM;
	for (dev->nr_pages = 0; dev->nr_pages < BWSNAP_COPY_PAGES;
	     dev->nr_pages++) {
		dev->pages[dev->nr_pages] = alloc_page(GFP_KERNEL);
		if (!dev->pages[dev->nr_pages]) {
			err = -ENOMEM;
			goto err_pages;
		}
	}
	/* A few in reserve: the nomem work always gets one in the end. */
	err = mempool_init_kmalloc_pool(&dev->copy_pool, 4,
					sizeof(struct bwsnap_copy));
	if (err)
		goto err_pages;
	return 0;

err_pages:
	while (dev->nr_pages)
		__free_page(dev->pages[--dev->nr_pages]);
	kfree(dev->pages);
	return err;
}

/* The device is drained: every page is back, no copy exists. */
void bwsnap_copy_exit(struct bwsnap_dev *dev)
{
	WARN_ON(dev->nr_pages != BWSNAP_COPY_PAGES);
	mempool_exit(&dev->copy_pool);
	while (dev->nr_pages)
		__free_page(dev->pages[--dev->nr_pages]);
	kfree(dev->pages);
}
