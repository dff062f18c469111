// SPDX-License-Identifier: GPL-2.0
/*
 * The state machine of a tracked device (docs/architecture.md):
 *
 *   SETUP --> ARMED --START--> SNAPSHOT --TO_INCREMENTAL--> INCREMENTAL
 *               ^                                               |
 *               +------------------ TO_SNAPSHOT <---------------+
 *   DESTROY from any state.
 *
 * SETUP and TO_SNAPSHOT create the COW file (the filesystem must be
 * writable); START is the point in time (called while it is frozen: it does
 * no filesystem I/O).
 *
 * Locking: each minor has its own ctl_lock, taken killable, which
 * serialises that minor's control calls and every state change; a stuck
 * device (a copy or read that does not complete) holds up only its own
 * minor's calls, and a call waiting on it can be killed. The minor table
 * (bwsnap_minors) has a mutex of its own, held only briefly and never
 * while waiting for I/O. A device is reference counted: the table holds
 * one reference, each control call in progress another, so a call that
 * found a device can lock it even if DESTROY removes it meanwhile (it then
 * sees dev->dead).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bitmap.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "bwsnap.h"

/* Serialises the table and the one-device-one-minor check. */
static DEFINE_MUTEX(bwsnap_minors_lock);
/* Devices by minor; bwsnap_minors_lock. */
static struct bwsnap_dev *bwsnap_minors[BWSNAP_MAX_MINORS];

struct bwsnap_dev *bwsnap_ctl_get(u32 minor)
{
	struct bwsnap_dev *dev;

	if (minor >= BWSNAP_MAX_MINORS)
		return NULL;
	mutex_lock(&bwsnap_minors_lock);
	dev = bwsnap_minors[minor];
	if (dev)
		kref_get(&dev->kref);
	mutex_unlock(&bwsnap_minors_lock);
	return dev;
}

static void bwsnap_free_maps(struct bwsnap_dev *dev)
{
	kvfree(dev->excl);
	kvfree(dev->pending);
	kvfree(dev->cow);
	kvfree(dev->period);
	kvfree(dev->tracking);
}

/*
 * The last reference went: everything the device had is released already
 * except its memory and the bdev (a setup that failed early has less).
 * Process context.
 */
static void bwsnap_dev_release(struct kref *kref)
{
	struct bwsnap_dev *dev = container_of(kref, struct bwsnap_dev, kref);
	bool pinned = dev->live;

	kfree(dev);
	/* Each minor that was set up pinned the module. */
	if (pinned)
		module_put(THIS_MODULE);
}

void bwsnap_ctl_put(struct bwsnap_dev *dev)
{
	kref_put(&dev->kref, bwsnap_dev_release);
}

int bwsnap_ctl_lock(struct bwsnap_dev *dev)
{
	int err = mutex_lock_killable(&dev->ctl_lock);

	if (err)
		return err;
	if (dev->dead) {
		mutex_unlock(&dev->ctl_lock);
		return -ENOENT;
	}
	return 0;
}

void bwsnap_ctl_unlock(struct bwsnap_dev *dev)
{
	mutex_unlock(&dev->ctl_lock);
}

static void bwsnap_set_state(struct bwsnap_dev *dev, enum bwsnap_state state)
{
	lockdep_assert_held(&dev->ctl_lock);
	spin_lock_irq(&dev->lock);
	dev->state = state;
	spin_unlock_irq(&dev->lock);
}

/* cow_size_pct of the volume, at most cow_size_max_mb, whole blocks. */
static u64 bwsnap_default_cow_size(struct bwsnap_dev *dev)
{
	u64 pct = min(READ_ONCE(bwsnap_cow_size_pct), 100U);
	u64 max = (u64)READ_ONCE(bwsnap_cow_size_max_mb) << 20;
	u64 size = div_u64(dev->dev_sectors << SECTOR_SHIFT, 100) * pct;

	return round_down(min(size, max), BWSNAP_BLOCK_SIZE);
}

/*
 * Create the COW file and its gendisk, enter ARMED. From SETUP (state NONE)
 * or TO_SNAPSHOT (INCREMENTAL); on failure nothing changed. ctl_lock held.
 */
static int bwsnap_ctl_arm(struct bwsnap_dev *dev, const char *cow_path,
			  u64 cow_size)
{
	struct bwsnap_store *store;
	int err;

	lockdep_assert_held(&dev->ctl_lock);
	if (cow_size == BWSNAP_COW_SIZE_DEFAULT)
		cow_size = bwsnap_default_cow_size(dev);
	if (!cow_size || !IS_ALIGNED(cow_size, BWSNAP_BLOCK_SIZE)) {
		pr_err("minor %u: COW size %llu is not a non-zero multiple of %u\n",
		       dev->minor, cow_size, BWSNAP_BLOCK_SIZE);
		return -EINVAL;
	}
	err = bwsnap_snap_disk_alloc(dev);
	if (err)
		return err;
	/* Last fallible step: nothing after it needs undoing. */
	store = bwsnap_cowfile_create(dev->bdev, cow_path, cow_size, &dev->lock,
				      dev->minor);
	if (IS_ERR(store)) {
		bwsnap_snap_disk_free(dev);
		return PTR_ERR(store);
	}
	dev->store = store;
	/* No copies exist while ARMED; the next START makes them. */
	spin_lock_irq(&dev->lock);
	bitmap_zero(dev->cow, dev->nr_blocks);
	bitmap_zero(dev->pending, dev->nr_blocks);
	spin_unlock_irq(&dev->lock);
	/* This buffer becomes the new tracking map at START. */
	bitmap_zero(dev->period, dev->nr_blocks);
	dev->changed_blocks = 0;
	bwsnap_io_set_excl(dev, true);
	bwsnap_set_state(dev, BWSNAP_STATE_ARMED);
	return 0;
}

/*
 * The snapshot is closed (state changed, gendisk gone): once no copy or
 * read is in flight, note the slots the store wrote and release it.
 * Killable; -EINTR leaves it for the next control call. ctl_lock held.
 */
static int bwsnap_ctl_disarm(struct bwsnap_dev *dev)
{
	int err;

	lockdep_assert_held(&dev->ctl_lock);
	if (!dev->disarm_pending)
		return 0;
	err = bwsnap_io_drain(dev);
	if (err)
		return err;
	if (dev->store) {
		bwsnap_io_mark_store(dev);
		bwsnap_io_set_excl(dev, false);
		dev->store->ops->release(dev->store);
		dev->store = NULL;
	}
	dev->disarm_pending = false;
	return 0;
}

static int bwsnap_alloc_maps(struct bwsnap_dev *dev)
{
	size_t longs = BITS_TO_LONGS(dev->nr_blocks);

	dev->tracking = kvcalloc(longs, sizeof(long), GFP_KERNEL);
	dev->period = kvcalloc(longs, sizeof(long), GFP_KERNEL);
	dev->cow = kvcalloc(longs, sizeof(long), GFP_KERNEL);
	dev->pending = kvcalloc(longs, sizeof(long), GFP_KERNEL);
	dev->excl = kvcalloc(longs, sizeof(long), GFP_KERNEL);
	if (!dev->tracking || !dev->period || !dev->cow || !dev->pending ||
	    !dev->excl) {
		bwsnap_free_maps(dev);
		return -ENOMEM;
	}
	return 0;
}

/* Take @minor in the table for @dev. */
static int bwsnap_ctl_claim(u32 minor, struct bwsnap_dev *dev)
{
	int err = 0;

	mutex_lock(&bwsnap_minors_lock);
	if (bwsnap_minors[minor])
		err = -EBUSY;
	else
		bwsnap_minors[minor] = dev;
	mutex_unlock(&bwsnap_minors_lock);
	return err;
}

/* Give @dev's minor back; drops the table's reference. */
static void bwsnap_ctl_unclaim(struct bwsnap_dev *dev)
{
	mutex_lock(&bwsnap_minors_lock);
	bwsnap_minors[dev->minor] = NULL;
	mutex_unlock(&bwsnap_minors_lock);
	bwsnap_ctl_put(dev);
}

/* One device, one minor: set dev->bdev unless another minor tracks @bdev. */
static int bwsnap_ctl_claim_bdev(struct bwsnap_dev *dev,
				 struct block_device *bdev)
{
	int err = 0;
	u32 i;

	mutex_lock(&bwsnap_minors_lock);
	for (i = 0; i < BWSNAP_MAX_MINORS; i++) {
		if (bwsnap_minors[i] && bwsnap_minors[i]->bdev == bdev) {
			pr_err("%s is tracked by minor %u already\n",
			       dev->bdev_path, i);
			err = -EBUSY;
		}
	}
	if (!err)
		dev->bdev = bdev;
	mutex_unlock(&bwsnap_minors_lock);
	return err;
}

/* Setup of a claimed minor, with its ctl_lock held. */
static int bwsnap_ctl_setup_locked(struct bwsnap_dev *dev,
				   const char *bdev_path, const char *cow_path,
				   u64 cow_size)
{
	struct block_device *bdev;
	int err;

	lockdep_assert_held(&dev->ctl_lock);
	bdev = bwsnap_bdev_open(bdev_path, &dev->bdev_ref);
	if (IS_ERR(bdev)) {
		err = PTR_ERR(bdev);
		pr_err("cannot open %s: %d\n", bdev_path, err);
		return err;
	}
	err = bwsnap_ctl_claim_bdev(dev, bdev);
	if (err)
		goto err_bdev;
	dev->dev_sectors = bdev_nr_sectors(bdev);
	dev->nr_blocks = DIV_ROUND_UP_ULL(dev->dev_sectors,
					  BWSNAP_SECTORS_PER_BLOCK);
	if (!dev->nr_blocks || dev->nr_blocks > UINT_MAX) {
		pr_err("%s: size %llu sectors not supported\n", bdev_path,
		       dev->dev_sectors);
		err = dev->nr_blocks ? -EFBIG : -EINVAL;
		goto err_bdev;
	}
	err = bwsnap_alloc_maps(dev);
	if (err)
		goto err_bdev;
	err = bwsnap_trace_init(&dev->trace);
	if (err)
		goto err_trace;
	err = bwsnap_io_init(dev);
	if (err)
		goto err_io;
	/* Published in state NONE: the hook lets everything pass until ARMED. */
	err = bwsnap_hook_publish(dev, NULL);
	if (err)
		goto err_publish;
	err = bwsnap_ctl_arm(dev, cow_path, cow_size);
	if (err)
		goto err_arm;
	return 0;

err_arm:
	bwsnap_hook_publish(NULL, dev);
	/* Writes the hook let through in state NONE are counted: wait them. */
	wait_event(dev->drain_wq, !READ_ONCE(dev->passing));
err_publish:
	bwsnap_io_free(dev);
err_io:
	bwsnap_trace_free(&dev->trace);
err_trace:
	bwsnap_free_maps(dev);
err_bdev:
	mutex_lock(&bwsnap_minors_lock);
	dev->bdev = NULL;
	mutex_unlock(&bwsnap_minors_lock);
	bwsnap_bdev_close(&dev->bdev_ref);
	return err;
}

int bwsnap_ctl_setup(u32 minor, const char *bdev_path, const char *cow_path,
		     u64 cow_size)
{
	struct bwsnap_dev *dev;
	int err;

	if (minor >= BWSNAP_MAX_MINORS)
		return -EINVAL;
	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	dev->minor = minor;
	uuid_gen(&dev->uuid);
	strscpy(dev->bdev_path, bdev_path, sizeof(dev->bdev_path));
	kref_init(&dev->kref);
	mutex_init(&dev->ctl_lock);
	spin_lock_init(&dev->lock);
	init_waitqueue_head(&dev->drain_wq);
	dev->state = BWSNAP_STATE_NONE;

	/* Locked before anyone can find it in the table. */
	mutex_lock(&dev->ctl_lock);
	err = bwsnap_ctl_claim(minor, dev);
	if (err) {
		mutex_unlock(&dev->ctl_lock);
		kfree(dev);
		return err;
	}
	err = bwsnap_ctl_setup_locked(dev, bdev_path, cow_path, cow_size);
	if (err) {
		dev->dead = true;
		mutex_unlock(&dev->ctl_lock);
		bwsnap_ctl_unclaim(dev);
		return err;
	}
	/* Each minor pins the module: rmmod is refused while one exists. */
	__module_get(THIS_MODULE);
	dev->live = true;
	mutex_unlock(&dev->ctl_lock);
	pr_info("minor %u: tracking %pg, COW file %s\n", minor, dev->bdev,
		cow_path);
	return 0;
}

/* Drop tracking fault: clear every N-th set bit of the period map. */
static void bwsnap_ctl_drop_tracking(struct bwsnap_dev *dev)
{
	unsigned int n = READ_ONCE(bwsnap_fault_drop_tracking);
	unsigned long b;

	if (!n)
		return;
	for_each_set_bit(b, dev->period, dev->nr_blocks) {
		if (bwsnap_fault_fires(n, &dev->fault_drop_cnt)) {
			clear_bit(b, dev->period);
			bwsnap_fault_log(BWSNAP_FAULT_DROP_TRACKING, dev->minor,
					 b);
		}
	}
}

/*
 * The snapshot instant. The filesystem is frozen: no filesystem I/O here.
 * The state switches first (writes in flight drained, see io.c), then the
 * snapshot device appears, serving from its first read.
 */
int bwsnap_ctl_start(struct bwsnap_dev *dev)
{
	int err;

	lockdep_assert_held(&dev->ctl_lock);
	if (dev->state != BWSNAP_STATE_ARMED)
		return -EINVAL;
	/* Per-snapshot fault counters and trace: nothing uses them while ARMED. */
	spin_lock_irq(&dev->lock);
	dev->fault_read_live_cnt = 0;
	dev->fault_corrupt_cnt = 0;
	dev->fault_teardown_cnt = 0;
	spin_unlock_irq(&dev->lock);
	dev->fault_drop_cnt = 0;
	bwsnap_trace_reset(&dev->trace);

	err = bwsnap_io_start(dev);
	if (err)
		return err;
	bwsnap_ctl_drop_tracking(dev);
	dev->changed_blocks = bitmap_weight(dev->period, dev->nr_blocks);
	err = bwsnap_snap_disk_add(dev);
	if (err) {
		/* The instant is taken; the snapshot cannot be read: failed. */
		bwsnap_io_invalidate(dev, err);
		return err;
	}
	bwsnap_fault_pause(&bwsnap_fault_delay_start_ms, BWSNAP_FAULT_DELAY_START,
			   dev->minor, 0);
	pr_info("minor %u: snapshot %llu of %pg taken, %llu blocks changed in the period\n",
		dev->minor, dev->seq, dev->bdev, dev->changed_blocks);
	return 0;
}

int bwsnap_ctl_to_incremental(struct bwsnap_dev *dev)
{
	lockdep_assert_held(&dev->ctl_lock);
	if (dev->state != BWSNAP_STATE_SNAPSHOT)
		return -EINVAL;
	/* From here the hook holds no write and no copy starts. */
	bwsnap_io_close(dev, BWSNAP_STATE_INCREMENTAL);
	bwsnap_snap_disk_free(dev);
	dev->disarm_pending = true;
	return bwsnap_ctl_disarm(dev);
}

int bwsnap_ctl_to_snapshot(struct bwsnap_dev *dev, const char *cow_path,
			   u64 cow_size)
{
	int err;

	lockdep_assert_held(&dev->ctl_lock);
	if (dev->state != BWSNAP_STATE_INCREMENTAL)
		return -EINVAL;
	/* A TO_INCREMENTAL that was killed while it drained. */
	err = bwsnap_ctl_disarm(dev);
	if (err)
		return err;
	return bwsnap_ctl_arm(dev, cow_path, cow_size);
}

/*
 * Tear the device down. Killable while it waits for I/O in flight: then
 * -EINTR, the device stays closed (state NONE, its minor taken) and the
 * next DESTROY finishes.
 */
int bwsnap_ctl_destroy(struct bwsnap_dev *dev)
{
	int err;

	lockdep_assert_held(&dev->ctl_lock);
	if (!dev->closed) {
		/* Held writes go on uncopied, reads in flight will fail. */
		bwsnap_io_close(dev, BWSNAP_STATE_NONE);
		/* After this no new hook invocation sees the device. */
		bwsnap_hook_publish(NULL, dev);
		bwsnap_snap_disk_free(dev);
		dev->disarm_pending = true;
		dev->closed = true;
	}
	err = bwsnap_ctl_disarm(dev);
	if (err)
		return err;
	bwsnap_io_free(dev);
	bwsnap_trace_free(&dev->trace);
	bwsnap_free_maps(dev);
	bwsnap_bdev_close(&dev->bdev_ref);
	dev->dead = true;
	pr_info("minor %u: destroyed\n", dev->minor);
	bwsnap_ctl_unclaim(dev);
	return 0;
}

void bwsnap_ctl_info(struct bwsnap_dev *dev, struct bwsnap_info *info)
{
	u64 total = 0, used = 0;
	u32 extents = 0;

	lockdep_assert_held(&dev->ctl_lock);
	spin_lock_irq(&dev->lock);
	info->state = dev->state;
	info->error = dev->error;
	info->seq = dev->seq;
	spin_unlock_irq(&dev->lock);
	if (dev->store) {
		dev->store->ops->usage(dev->store, &total, &used);
		dev->store->ops->extents(dev->store, &extents);
	}
	memcpy(info->uuid, dev->uuid.b, sizeof(info->uuid));
	info->dev_size = dev->dev_sectors << SECTOR_SHIFT;
	info->cow_size = total;
	info->cow_used = used;
	info->changed_blocks = dev->changed_blocks;
	info->tracking_blocks = atomic64_read(&dev->tracking_blocks);
	info->cow_copies = atomic64_read(&dev->cow_copies);
	info->cow_reads = atomic64_read(&dev->cow_reads);
	info->live_reads = atomic64_read(&dev->live_reads);
	info->tracked_writes = atomic64_read(&dev->tracked_writes);
	info->cow_extents = extents;
	strscpy(info->bdev_path, dev->bdev_path, sizeof(info->bdev_path));
}

/*
 * Copy the period map to user space: @m->nr_blocks bits from
 * @m->start_block (a multiple of 64), clamped to the device. ctl_lock held.
 */
int bwsnap_ctl_read_map(struct bwsnap_dev *dev, struct bwsnap_map *m)
{
	u64 __user *buf = u64_to_user_ptr(m->buf);
	u64 n, words, w0, last;

	lockdep_assert_held(&dev->ctl_lock);
	BUILD_BUG_ON(BITS_PER_LONG != 64);
	if (m->flags || m->start_block % 64)
		return -EINVAL;
	if (m->start_block >= dev->nr_blocks || !m->nr_blocks) {
		m->nr_blocks = 0;
		return 0;
	}
	n = min(m->nr_blocks, dev->nr_blocks - m->start_block);
	words = DIV_ROUND_UP(n, 64);
	w0 = m->start_block / 64;
	/* On 64-bit little-endian a bitmap word is the ABI's __u64 word. */
	if (words > 1 &&
	    copy_to_user(buf, dev->period + w0, (words - 1) * sizeof(u64)))
		return -EFAULT;
	/* Bits past the blocks asked for are zero. */
	last = dev->period[w0 + words - 1];
	if (n % 64)
		last &= GENMASK_ULL(n % 64 - 1, 0);
	if (put_user(last, buf + words - 1))
		return -EFAULT;
	m->nr_blocks = n;
	return 0;
}

/* ctl_lock held. */
int bwsnap_ctl_extents(struct bwsnap_dev *dev, struct bwsnap_extents *e)
{
	struct bwsnap_extent __user *buf = u64_to_user_ptr(e->buf);
	const struct bwsnap_cow_extent *ext = NULL;
	u32 i, n = 0;

	lockdep_assert_held(&dev->ctl_lock);
	if (dev->store && !dev->disarm_pending)
		ext = dev->store->ops->extents(dev->store, &n);
	for (i = 0; i < n && i < e->count; i++) {
		struct bwsnap_extent out = {
			.physical = ext[i].physical,
			.length = ext[i].length,
		};

		if (copy_to_user(buf + i, &out, sizeof(out)))
			return -EFAULT;
	}
	e->count = n;
	return 0;
}
