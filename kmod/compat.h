/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Kernel API differences bwsnap meets between the kernels it is built for
 * (Debian's 6.1 and 6.12), wrapped in one place. Each wrapper names the
 * release that changed the API. Other releases between them are not
 * supported and fail the build, rather than guessing.
 */
#ifndef _BWSNAP_COMPAT_H
#define _BWSNAP_COMPAT_H

#include <linux/version.h>
#include <linux/blkdev.h>
#include <linux/err.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/ftrace.h>
#include <linux/mount.h>

#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 1, 0) || \
	(LINUX_VERSION_CODE >= KERNEL_VERSION(6, 5, 0) && \
	 LINUX_VERSION_CODE < KERNEL_VERSION(6, 9, 0))
#error "bwsnap supports kernels 6.1 to 6.4 and 6.9 or later"
#endif

/*
 * Opening a block device by path, read-only and not exclusively (the
 * mounted filesystem holds it exclusively). 6.9 returns a struct file.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
struct bwsnap_bdev_ref {
	struct file *file;
};

static inline struct block_device *
bwsnap_bdev_open(const char *path, struct bwsnap_bdev_ref *ref)
{
	struct file *file = bdev_file_open_by_path(path, BLK_OPEN_READ, NULL,
						   NULL);

	if (IS_ERR(file))
		return ERR_CAST(file);
	ref->file = file;
	return file_bdev(file);
}

static inline void bwsnap_bdev_close(struct bwsnap_bdev_ref *ref)
{
	fput(ref->file);
}
#else
struct bwsnap_bdev_ref {
	struct block_device *bdev;
};

static inline struct block_device *
bwsnap_bdev_open(const char *path, struct bwsnap_bdev_ref *ref)
{
	struct block_device *bdev = blkdev_get_by_path(path, FMODE_READ, NULL);

	if (!IS_ERR(bdev))
		ref->bdev = bdev;
	return bdev;
}

static inline void bwsnap_bdev_close(struct bwsnap_bdev_ref *ref)
{
	blkdev_put(ref->bdev, FMODE_READ);
}
#endif

/*
 * A bio-based gendisk with 512-byte logical blocks. 6.9 takes the queue
 * limits at allocation and returns an ERR_PTR; 6.1 returns NULL and sets
 * limits afterwards.
 */
static inline struct gendisk *bwsnap_alloc_disk(void)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
	struct queue_limits lim = {
		.logical_block_size = SECTOR_SIZE,
		.physical_block_size = PAGE_SIZE,
		.io_min = PAGE_SIZE,
	};

	return blk_alloc_disk(&lim, NUMA_NO_NODE);
#else
	struct gendisk *disk = blk_alloc_disk(NUMA_NO_NODE);

	if (!disk)
		return ERR_PTR(-ENOMEM);
	blk_queue_logical_block_size(disk->queue, SECTOR_SIZE);
	blk_queue_physical_block_size(disk->queue, PAGE_SIZE);
	blk_queue_io_min(disk->queue, PAGE_SIZE);
	return disk;
#endif
}

/* vfs_unlink() takes the mount's idmap from 6.3 on, a user namespace before. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
#define bwsnap_file_idmap(file)	file_mnt_idmap(file)
#else
#define bwsnap_file_idmap(file)	file_mnt_user_ns(file)
#endif

/*
 * The ftrace callback's saved registers. Both kernels hand a full pt_regs to
 * an ops registered with FTRACE_OPS_FL_SAVE_REGS; NULL means the arch did not
 * save them (the hook then does nothing).
 */
static __always_inline struct pt_regs *
bwsnap_ftrace_regs(struct ftrace_regs *fregs)
{
	return ftrace_get_regs(fregs);
}

#endif /* _BWSNAP_COMPAT_H */
