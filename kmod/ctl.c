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
 * no filesystem I/O). Every function here runs with bwsnap_ctl_mutex held,
 * which serialises all state changes; the hook and the worker only read
 * the state (under dev->lock), and only the worker sets dev->error.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bitmap.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "bwsnap.h"

DEFINE_MUTEX(bwsnap_ctl_mutex);

/* Devices by minor; bwsnap_ctl_mutex. */
static struct bwsnap_dev *bwsnap_devs[BWSNAP_MAX_MINORS];

struct bwsnap_dev *bwsnap_ctl_get(u32 minor)
{
	lockdep_assert_held(&bwsnap_ctl_mutex);
	if (minor >= BWSNAP_MAX_MINORS)
		return NULL;
	return bwsnap_devs[minor];
}

static void bwsnap_set_state(struct bwsnap_dev *dev, enum bwsnap_state state)
{
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
 * or TO_SNAPSHOT (INCREMENTAL); on failure nothing changed.
 */
static int bwsnap_ctl_arm(struct bwsnap_dev *dev, const char *cow_path,
			  u64 cow_size)
{
	struct bwsnap_store *store;
	int err;

	if (cow_size == BWSNAP_COW_SIZE_DEFAULT)
		cow_size = bwsnap_default_cow_size(dev);
	if (!cow_size || !IS_ALIGNED(cow_size, BWSNAP_BLOCK_SIZE)) {
		pr_err("minor %u: COW size %llu is not a non-zero multiple of %u\n",
		       dev->minor, cow_size, BWSNAP_BLOCK_SIZE);
		return -EINVAL;
	}
	err = bwsnap_io_disk_alloc(dev);
	if (err)
		return err;
	/* Last fallible step: nothing after it needs undoing. */
	store = bwsnap_cowfile_create(dev->bdev, cow_path, cow_size);
	if (IS_ERR(store)) {
		bwsnap_io_disk_free(dev);
		return PTR_ERR(store);
	}
	dev->store = store;
	/* No copies exist while ARMED; the next START makes them. */
	bitmap_zero(dev->done, dev->nr_blocks);
	/* This buffer becomes the new tracking map at START. */
	bitmap_zero(dev->period, dev->nr_blocks);
	dev->changed_blocks = 0;
	bwsnap_io_set_excl(dev, true);
	bwsnap_set_state(dev, BWSNAP_STATE_ARMED);
	return 0;
}

/* Leave SNAPSHOT (or tear down): the gendisk and the COW file go. */
static void bwsnap_ctl_disarm(struct bwsnap_dev *dev)
{
	/* The worker is alive: del_gendisk may wait for reads it holds. */
	bwsnap_io_disk_free(dev);
	bwsnap_io_worker_flush(dev);
	if (dev->store) {
		bwsnap_io_mark_store(dev);
		bwsnap_io_set_excl(dev, false);
		dev->store->ops->release(dev->store);
		dev->store = NULL;
	}
}

static void bwsnap_free_maps(struct bwsnap_dev *dev)
{
	kvfree(dev->excl);
	kvfree(dev->done);
	kvfree(dev->period);
	kvfree(dev->tracking);
}

static int bwsnap_alloc_maps(struct bwsnap_dev *dev)
{
	size_t longs = BITS_TO_LONGS(dev->nr_blocks);

	dev->tracking = kvcalloc(longs, sizeof(long), GFP_KERNEL);
	dev->period = kvcalloc(longs, sizeof(long), GFP_KERNEL);
	dev->done = kvcalloc(longs, sizeof(long), GFP_KERNEL);
	dev->excl = kvcalloc(longs, sizeof(long), GFP_KERNEL);
	if (!dev->tracking || !dev->period || !dev->done || !dev->excl) {
		bwsnap_free_maps(dev);
		return -ENOMEM;
	}
	return 0;
}

int bwsnap_ctl_setup(u32 minor, const char *bdev_path, const char *cow_path,
		     u64 cow_size)
{
	struct block_device *bdev;
	struct bwsnap_dev *dev;
	u32 i;
	int err;

	lockdep_assert_held(&bwsnap_ctl_mutex);
	if (minor >= BWSNAP_MAX_MINORS)
		return -EINVAL;
	if (bwsnap_devs[minor])
		return -EBUSY;

	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	dev->minor = minor;
	uuid_gen(&dev->uuid);
	strscpy(dev->bdev_path, bdev_path, sizeof(dev->bdev_path));
	spin_lock_init(&dev->lock);
	bio_list_init(&dev->queue);
	init_waitqueue_head(&dev->worker_wq);
	init_waitqueue_head(&dev->idle_wq);
	dev->state = BWSNAP_STATE_NONE;

	bdev = bwsnap_bdev_open(bdev_path, &dev->bdev_ref);
	if (IS_ERR(bdev)) {
		err = PTR_ERR(bdev);
		pr_err("cannot open %s: %d\n", bdev_path, err);
		goto err_open;
	}
	for (i = 0; i < BWSNAP_MAX_MINORS; i++) {
		if (bwsnap_devs[i] && bwsnap_devs[i]->bdev == bdev) {
			pr_err("%s is tracked by minor %u already\n", bdev_path,
			       i);
			err = -EBUSY;
			goto err_busy;
		}
	}
	dev->bdev = bdev;
	dev->dev_sectors = bdev_nr_sectors(bdev);
	dev->nr_blocks = DIV_ROUND_UP_ULL(dev->dev_sectors,
					  BWSNAP_SECTORS_PER_BLOCK);
	if (!dev->nr_blocks || dev->nr_blocks > UINT_MAX) {
		pr_err("%s: size %llu sectors not supported\n", bdev_path,
		       dev->dev_sectors);
		err = dev->nr_blocks ? -EFBIG : -EINVAL;
		goto err_busy;
	}
	err = bwsnap_alloc_maps(dev);
	if (err)
		goto err_busy;
	err = bwsnap_trace_init(&dev->trace);
	if (err)
		goto err_trace;
	err = bwsnap_io_worker_start(dev);
	if (err)
		goto err_worker;
	/* Published in state NONE: the hook lets everything pass until ARMED. */
	err = bwsnap_hook_publish(dev, NULL);
	if (err)
		goto err_publish;
	err = bwsnap_ctl_arm(dev, cow_path, cow_size);
	if (err)
		goto err_arm;

	bwsnap_devs[minor] = dev;
	/* Each minor pins the module: rmmod is refused while one exists. */
	__module_get(THIS_MODULE);
	pr_info("minor %u: tracking %pg, COW file %s\n", minor, bdev, cow_path);
	return 0;

err_arm:
	bwsnap_hook_publish(NULL, dev);
err_publish:
	bwsnap_io_worker_stop(dev);
err_worker:
	bwsnap_trace_free(&dev->trace);
err_trace:
	bwsnap_free_maps(dev);
err_busy:
	bwsnap_bdev_close(&dev->bdev_ref);
err_open:
	kfree(dev);
	return err;
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

/* The snapshot instant. The filesystem is frozen: no filesystem I/O here. */
int bwsnap_ctl_start(struct bwsnap_dev *dev)
{
	int err;

	if (dev->state != BWSNAP_STATE_ARMED)
		return -EINVAL;
	/* Per-snapshot fault counters and trace: nothing uses them while ARMED. */
	dev->fault_read_live_cnt = 0;
	dev->fault_corrupt_cnt = 0;
	dev->fault_drop_cnt = 0;
	bwsnap_trace_reset(&dev->trace);
	/* Until the state switch below, reads of the new device fail. */
	err = bwsnap_io_disk_add(dev);
	if (err)
		return err;
	bwsnap_fault_pause(&bwsnap_fault_delay_start_ms, BWSNAP_FAULT_DELAY_START,
			   dev->minor, 0);

	spin_lock_irq(&dev->lock);
	swap(dev->tracking, dev->period);
	atomic64_set(&dev->tracking_blocks, 0);
	dev->error = 0;
	dev->seq++;
	dev->state = BWSNAP_STATE_SNAPSHOT;
	spin_unlock_irq(&dev->lock);

	bwsnap_ctl_drop_tracking(dev);
	dev->changed_blocks = bitmap_weight(dev->period, dev->nr_blocks);
	pr_info("minor %u: snapshot %llu of %pg taken, %llu blocks changed in the period\n",
		dev->minor, dev->seq, dev->bdev, dev->changed_blocks);
	return 0;
}

int bwsnap_ctl_to_incremental(struct bwsnap_dev *dev)
{
	if (dev->state != BWSNAP_STATE_SNAPSHOT)
		return -EINVAL;
	/* From here the hook holds no write and the worker copies nothing. */
	bwsnap_set_state(dev, BWSNAP_STATE_INCREMENTAL);
	bwsnap_ctl_disarm(dev);
	return 0;
}

int bwsnap_ctl_to_snapshot(struct bwsnap_dev *dev, const char *cow_path,
			   u64 cow_size)
{
	if (dev->state != BWSNAP_STATE_INCREMENTAL)
		return -EINVAL;
	return bwsnap_ctl_arm(dev, cow_path, cow_size);
}

void bwsnap_ctl_destroy(struct bwsnap_dev *dev)
{
	/* After this no hook invocation uses @dev; held bios are queued. */
	bwsnap_hook_publish(NULL, dev);
	bwsnap_set_state(dev, BWSNAP_STATE_NONE);
	bwsnap_ctl_disarm(dev);
	/* Held writes go on uncopied, queued reads fail. */
	bwsnap_io_worker_stop(dev);
	bwsnap_trace_free(&dev->trace);
	bwsnap_free_maps(dev);
	bwsnap_bdev_close(&dev->bdev_ref);
	bwsnap_devs[dev->minor] = NULL;
	pr_info("minor %u: destroyed\n", dev->minor);
	kfree(dev);
	module_put(THIS_MODULE);
}

void bwsnap_ctl_info(struct bwsnap_dev *dev, struct bwsnap_info *info)
{
	u64 total = 0, used = 0;
	u32 extents = 0;

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
 * @m->start_block (a multiple of 64), clamped to the device.
 */
int bwsnap_ctl_read_map(struct bwsnap_dev *dev, struct bwsnap_map *m)
{
	u64 __user *buf = u64_to_user_ptr(m->buf);
	u64 n, words, w0, last;

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

int bwsnap_ctl_extents(struct bwsnap_dev *dev, struct bwsnap_extents *e)
{
	struct bwsnap_extent __user *buf = u64_to_user_ptr(e->buf);
	const struct bwsnap_cow_extent *ext = NULL;
	u32 i, n = 0;

	if (dev->store)
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
