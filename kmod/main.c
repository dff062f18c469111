// SPDX-License-Identifier: GPL-2.0
/*
 * bwsnap: copy-on-write snapshots of mounted block devices with changed-block
 * tracking, for the Blockwitness reference backup pipeline.
 *
 * This file: module load/unload, module parameters, and the control device
 * /dev/bwsnap-ctl whose ioctls (bwsnap_abi.h) it decodes and hands to ctl.c
 * with the minor's ctl_lock held (SETUP takes it itself).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/limits.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "bwsnap.h"

unsigned int bwsnap_cow_size_pct = 10;
module_param_named(cow_size_pct, bwsnap_cow_size_pct, uint, 0644);
MODULE_PARM_DESC(cow_size_pct,
		 "Default COW file size in percent of the volume (10)");

unsigned long bwsnap_cow_size_max_mb = 10240;
module_param_named(cow_size_max_mb, bwsnap_cow_size_max_mb, ulong, 0644);
MODULE_PARM_DESC(cow_size_max_mb, "Upper bound of the default COW size, MiB (10240)");

unsigned int bwsnap_fault_cow_read_live;
module_param_named(fault_cow_read_live, bwsnap_fault_cow_read_live, uint, 0644);
MODULE_PARM_DESC(fault_cow_read_live,
		 "Fault: serve the live block instead of the COW copy for 1 in N snapshot reads of copied blocks (0 = off)");

unsigned int bwsnap_fault_drop_tracking;
module_param_named(fault_drop_tracking, bwsnap_fault_drop_tracking, uint, 0644);
MODULE_PARM_DESC(fault_drop_tracking,
		 "Fault: at START, clear 1 in N set bits of the period map (0 = off)");

unsigned int bwsnap_fault_corrupt_cow;
module_param_named(fault_corrupt_cow, bwsnap_fault_corrupt_cow, uint, 0644);
MODULE_PARM_DESC(fault_corrupt_cow,
		 "Fault: flip a bit in 1 in N COW copies (0 = off)");

unsigned int bwsnap_fault_delay_cow_ms;
module_param_named(fault_delay_cow_ms, bwsnap_fault_delay_cow_ms, uint, 0644);
MODULE_PARM_DESC(fault_delay_cow_ms,
		 "Fault: hold each COW copy this many ms (0 = off)");

unsigned int bwsnap_fault_delay_read_ms;
module_param_named(fault_delay_read_ms, bwsnap_fault_delay_read_ms, uint, 0644);
MODULE_PARM_DESC(fault_delay_read_ms,
		 "Fault: hold each snapshot read this many ms after it is planned, before its I/O; setting 0 lets held reads go (0 = off)");

unsigned int bwsnap_fault_delay_start_ms;
module_param_named(fault_delay_start_ms, bwsnap_fault_delay_start_ms, uint, 0644);
MODULE_PARM_DESC(fault_delay_start_ms,
		 "Fault: START waits this many ms right after adding the snapshot device; setting 0 ends the wait (0 = off)");

unsigned int bwsnap_fault_delay_extents_ms;
module_param_named(fault_delay_extents_ms, bwsnap_fault_delay_extents_ms, uint, 0644);
MODULE_PARM_DESC(fault_delay_extents_ms,
		 "Fault: wait this many ms between the filesystem's COW extent report and reading it; setting 0 ends the wait (0 = off)");

unsigned int bwsnap_fault_teardown_open;
module_param_named(fault_teardown_open, bwsnap_fault_teardown_open, uint, 0644);
MODULE_PARM_DESC(fault_teardown_open,
		 "Fault: 1 in N snapshot reads in flight when the snapshot stops serving complete with what they read instead of EIO (the teardown race; 0 = off)");

int bwsnap_major;

static char *bwsnap_user_path(u64 ptr)
{
	return strndup_user(u64_to_user_ptr(ptr), PATH_MAX);
}

/*
 * The device of @minor, referenced and with its ctl_lock held (killable),
 * or NULL with *@err: EINVAL (bad minor), ENOENT (not set up), EINTR.
 */
static struct bwsnap_dev *bwsnap_lock_minor(u32 minor, int *err)
{
	struct bwsnap_dev *dev;

	if (minor >= BWSNAP_MAX_MINORS) {
		*err = -EINVAL;
		return NULL;
	}
	dev = bwsnap_ctl_get(minor);
	if (!dev) {
		*err = -ENOENT;
		return NULL;
	}
	*err = bwsnap_ctl_lock(dev);
	if (*err) {
		bwsnap_ctl_put(dev);
		return NULL;
	}
	return dev;
}

static void bwsnap_unlock_minor(struct bwsnap_dev *dev)
{
	bwsnap_ctl_unlock(dev);
	bwsnap_ctl_put(dev);
}

static long bwsnap_ioc_setup(void __user *uarg)
{
	struct bwsnap_setup a;
	char *bdev_path, *cow_path;
	long err;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (a.flags || a.minor >= BWSNAP_MAX_MINORS)
		return -EINVAL;
	bdev_path = bwsnap_user_path(a.bdev_path);
	if (IS_ERR(bdev_path))
		return PTR_ERR(bdev_path);
	cow_path = bwsnap_user_path(a.cow_path);
	if (IS_ERR(cow_path)) {
		err = PTR_ERR(cow_path);
		goto out_bdev;
	}
	err = bwsnap_ctl_setup(a.minor, bdev_path, cow_path, a.cow_size);
	kfree(cow_path);
out_bdev:
	kfree(bdev_path);
	return err;
}

static long bwsnap_ioc_to_snapshot(void __user *uarg)
{
	struct bwsnap_to_snapshot a;
	struct bwsnap_dev *dev;
	char *cow_path;
	int err;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (a.flags)
		return -EINVAL;
	cow_path = bwsnap_user_path(a.cow_path);
	if (IS_ERR(cow_path))
		return PTR_ERR(cow_path);
	dev = bwsnap_lock_minor(a.minor, &err);
	if (dev) {
		err = bwsnap_ctl_to_snapshot(dev, cow_path, a.cow_size);
		bwsnap_unlock_minor(dev);
	}
	kfree(cow_path);
	return err;
}

/* START, TO_INCREMENTAL, DESTROY: a minor and no payload. */
static long bwsnap_ioc_minor(unsigned int cmd, void __user *uarg)
{
	struct bwsnap_minor a;
	struct bwsnap_dev *dev;
	int err;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (a.flags)
		return -EINVAL;
	dev = bwsnap_lock_minor(a.minor, &err);
	if (!dev)
		return err;
	switch (cmd) {
	case BWSNAP_IOC_START:
		err = bwsnap_ctl_start(dev);
		break;
	case BWSNAP_IOC_TO_INCREMENTAL:
		err = bwsnap_ctl_to_incremental(dev);
		break;
	default:
		err = bwsnap_ctl_destroy(dev);
		break;
	}
	bwsnap_unlock_minor(dev);
	return err;
}

static long bwsnap_ioc_info(void __user *uarg)
{
	struct bwsnap_info *info;
	struct bwsnap_dev *dev;
	u32 minor;
	int err;

	if (get_user(minor, (u32 __user *)uarg))
		return -EFAULT;
	if (minor >= BWSNAP_MAX_MINORS)
		return -EINVAL;
	info = kzalloc(sizeof(*info), GFP_KERNEL);
	if (!info)
		return -ENOMEM;
	info->minor = minor;
	info->abi_version = BWSNAP_ABI_VERSION;
	dev = bwsnap_lock_minor(minor, &err);
	if (dev) {
		bwsnap_ctl_info(dev, info);
		bwsnap_unlock_minor(dev);
	} else if (err == -ENOENT) {
		/* An unused minor reads as state NONE. */
		err = 0;
	}
	if (!err && copy_to_user(uarg, info, sizeof(*info)))
		err = -EFAULT;
	kfree(info);
	return err;
}

static long bwsnap_ioc_read_map(void __user *uarg)
{
	struct bwsnap_map m;
	struct bwsnap_dev *dev;
	int err;

	if (copy_from_user(&m, uarg, sizeof(m)))
		return -EFAULT;
	dev = bwsnap_lock_minor(m.minor, &err);
	if (dev) {
		err = bwsnap_ctl_read_map(dev, &m);
		bwsnap_unlock_minor(dev);
	}
	if (!err && copy_to_user(uarg, &m, sizeof(m)))
		err = -EFAULT;
	return err;
}

static long bwsnap_ioc_extents(void __user *uarg)
{
	struct bwsnap_extents e;
	struct bwsnap_dev *dev;
	int err;

	if (copy_from_user(&e, uarg, sizeof(e)))
		return -EFAULT;
	dev = bwsnap_lock_minor(e.minor, &err);
	if (dev) {
		err = bwsnap_ctl_extents(dev, &e);
		bwsnap_unlock_minor(dev);
	}
	if (!err && copy_to_user(uarg, &e, sizeof(e)))
		err = -EFAULT;
	return err;
}

static long bwsnap_ioc_trace(void __user *uarg)
{
	struct bwsnap_trace t;
	struct bwsnap_dev *dev;
	int err;

	if (copy_from_user(&t, uarg, sizeof(t)))
		return -EFAULT;
	dev = bwsnap_lock_minor(t.minor, &err);
	if (dev) {
		/* Single consumer: the ctl_lock. */
		err = bwsnap_trace_drain(&dev->trace, u64_to_user_ptr(t.buf),
					 t.count, &t.count, &t.dropped);
		bwsnap_unlock_minor(dev);
	}
	if (!err && copy_to_user(uarg, &t, sizeof(t)))
		err = -EFAULT;
	return err;
}

static long bwsnap_ioctl(struct file *file, unsigned int cmd,
			 unsigned long arg)
{
	void __user *uarg = (void __user *)arg;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	switch (cmd) {
	case BWSNAP_IOC_SETUP:
		return bwsnap_ioc_setup(uarg);
	case BWSNAP_IOC_START:
	case BWSNAP_IOC_TO_INCREMENTAL:
	case BWSNAP_IOC_DESTROY:
		return bwsnap_ioc_minor(cmd, uarg);
	case BWSNAP_IOC_TO_SNAPSHOT:
		return bwsnap_ioc_to_snapshot(uarg);
	case BWSNAP_IOC_INFO:
		return bwsnap_ioc_info(uarg);
	case BWSNAP_IOC_READ_MAP:
		return bwsnap_ioc_read_map(uarg);
	case BWSNAP_IOC_COW_EXTENTS:
		return bwsnap_ioc_extents(uarg);
	case BWSNAP_IOC_TRACE:
		return bwsnap_ioc_trace(uarg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations bwsnap_ctl_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = bwsnap_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice bwsnap_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = BWSNAP_CTL_NAME,
	.fops = &bwsnap_ctl_fops,
	.mode = 0600,
};

static int __init bwsnap_init(void)
{
	int err;

	BUILD_BUG_ON(PAGE_SIZE != BWSNAP_BLOCK_SIZE);
	err = bwsnap_fault_init();
	if (err)
		return err;
	bwsnap_major = register_blkdev(0, BWSNAP_DEV_PREFIX);
	if (bwsnap_major < 0) {
		err = bwsnap_major;
		goto err_blkdev;
	}
	err = bwsnap_hook_init();
	if (err)
		goto err_hook;
	err = misc_register(&bwsnap_misc);
	if (err)
		goto err_misc;
	pr_info("loaded, ABI %d, block major %d\n", BWSNAP_ABI_VERSION,
		bwsnap_major);
	return 0;

err_misc:
	bwsnap_hook_exit();
err_hook:
	unregister_blkdev(bwsnap_major, BWSNAP_DEV_PREFIX);
err_blkdev:
	bwsnap_fault_exit();
	return err;
}

/* Every minor holds a module reference, so none exists here. */
static void __exit bwsnap_exit(void)
{
	misc_deregister(&bwsnap_misc);
	bwsnap_hook_exit();
	unregister_blkdev(bwsnap_major, BWSNAP_DEV_PREFIX);
	bwsnap_fault_exit();
	pr_info("unloaded\n");
}

module_init(bwsnap_init);
module_exit(bwsnap_exit);

MODULE_DESCRIPTION("Copy-on-write block device snapshots with changed-block tracking");
MODULE_AUTHOR("Blockwitness");
MODULE_LICENSE("GPL");
