// SPDX-License-Identifier: GPL-2.0
/*
 * bwtest: a test helper that submits one bio to a block device from kernel
 * code, as a filesystem or a driver would, and reports how it ended. Some
 * requests cannot come from user space on the test machine: QEMU 7.2's
 * virtio-blk has no secure erase, so BLKSECDISCARD stops in the ioctl, yet
 * on a device that has it such a bio reaches whatever hooks
 * submit_bio_noacct().
 *
 *   insmod bwtest.ko dev=/dev/vdb op=secure-erase sector=2048 sectors=8
 *
 * logs "bwtest: secure-erase /dev/vdb 2048+8: status N" (0 or -errno) and
 * then fails the load on purpose (-ECANCELED): nothing stays loaded.
 * op: secure-erase, discard, write-zeroes.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/file.h>
#include <linux/module.h>
#include <linux/version.h>

static char *dev;
module_param(dev, charp, 0);
static char *op = "secure-erase";
module_param(op, charp, 0);
static ulong sector;
module_param(sector, ulong, 0);
static uint sectors = 8;
module_param(sectors, uint, 0);

static int bwtest_submit(struct block_device *bdev, enum req_op rop)
{
	struct bio *bio = bio_alloc(bdev, 0, rop, GFP_KERNEL);
	int err;

	bio->bi_iter.bi_sector = sector;
	bio->bi_iter.bi_size = sectors << SECTOR_SHIFT;
	err = submit_bio_wait(bio);
	bio_put(bio);
	return err;
}

static int __init bwtest_init(void)
{
	struct block_device *bdev;
	enum req_op rop;
	int err;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
	struct file *file;
#endif

	if (!dev)
		return -EINVAL;
	if (!strcmp(op, "secure-erase"))
		rop = REQ_OP_SECURE_ERASE;
	else if (!strcmp(op, "discard"))
		rop = REQ_OP_DISCARD;
	else if (!strcmp(op, "write-zeroes"))
		rop = REQ_OP_WRITE_ZEROES;
	else
		return -EINVAL;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
	file = bdev_file_open_by_path(dev, BLK_OPEN_READ | BLK_OPEN_WRITE, NULL,
				      NULL);
	if (IS_ERR(file))
		return PTR_ERR(file);
	bdev = file_bdev(file);
	err = bwtest_submit(bdev, rop);
	fput(file);
#else
	bdev = blkdev_get_by_path(dev, FMODE_READ | FMODE_WRITE, NULL);
	if (IS_ERR(bdev))
		return PTR_ERR(bdev);
	err = bwtest_submit(bdev, rop);
	blkdev_put(bdev, FMODE_READ | FMODE_WRITE);
#endif
	pr_info("%s %s %lu+%u: status %d\n", op, dev, sector, sectors, err);
	return -ECANCELED;
}

module_init(bwtest_init);
MODULE_DESCRIPTION("bwsnap test helper: submit one bio from kernel code");
MODULE_LICENSE("GPL");
