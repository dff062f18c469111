// SPDX-License-Identifier: GPL-2.0
/*
 * Fault knobs and the log of their firings.
 *
 * The knobs themselves are module parameters (main.c), read where they act
 * (io.c, ctl.c); firings are deterministic: the n-th eligible event of a
 * snapshot fires for n = N, 2N, ... (bwsnap_fault_fires()).
 *
 * Every firing is recorded here, in order, and is readable as text from
 * /sys/kernel/debug/bwsnap/faults, one line per firing:
 *     cow-read-live minor=0 block=1234
 * Writing anything to the file clears the log. The log holds
 * BWSNAP_FAULT_LOG records; later firings are counted and reported on a
 * last line "dropped N". Firings also go to printk, rate-limited (a knob at
 * N=1 can fire for every block, and a flood on the console would change the
 * timing the knobs are meant to control).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/debugfs.h>
#include <linux/fs.h>
#include <linux/ratelimit.h>
#include <linux/sched/signal.h>
#include <linux/seq_file.h>
#include <linux/spinlock.h>
#include <linux/vmalloc.h>

#include "bwsnap.h"

#define BWSNAP_FAULT_LOG	65536

struct bwsnap_fault_rec {
	u64 block;
	u32 minor;
	u32 kind;
};

static const char *const bwsnap_fault_names[] = {
	[BWSNAP_FAULT_COW_READ_LIVE] = "cow-read-live",
	[BWSNAP_FAULT_DROP_TRACKING] = "drop-tracking",
	[BWSNAP_FAULT_CORRUPT_COW] = "corrupt-cow",
	[BWSNAP_FAULT_DELAY_COW] = "delay-cow",
	[BWSNAP_FAULT_DELAY_READ] = "delay-read",
	[BWSNAP_FAULT_DELAY_START] = "delay-start",
	[BWSNAP_FAULT_DELAY_EXTENTS] = "delay-extents",
	[BWSNAP_FAULT_TEARDOWN_OPEN] = "open-teardown",
};

/* irq-safe: knobs fire under dev->lock. */
static DEFINE_SPINLOCK(bwsnap_fault_lock);
static struct bwsnap_fault_rec *bwsnap_fault_recs;	/* bwsnap_fault_lock */
static u32 bwsnap_fault_nr;				/* bwsnap_fault_lock */
static u64 bwsnap_fault_dropped;			/* bwsnap_fault_lock */
static struct dentry *bwsnap_debugfs_dir;

/* Any context (a firing may happen under dev->lock). */
void bwsnap_fault_log(enum bwsnap_fault_kind kind, u32 minor, u64 block)
{
	unsigned long flags;

	spin_lock_irqsave(&bwsnap_fault_lock, flags);
	if (bwsnap_fault_nr < BWSNAP_FAULT_LOG) {
		bwsnap_fault_recs[bwsnap_fault_nr].block = block;
		bwsnap_fault_recs[bwsnap_fault_nr].minor = minor;
		bwsnap_fault_recs[bwsnap_fault_nr].kind = kind;
		bwsnap_fault_nr++;
	} else {
		bwsnap_fault_dropped++;
	}
	spin_unlock_irqrestore(&bwsnap_fault_lock, flags);
	pr_notice_ratelimited("fault %s minor=%u block=%llu\n",
			      bwsnap_fault_names[kind], minor, block);
}

/*
 * A pause knob: wait *@knob ms, or less when the knob is set back to 0 or the
 * task is killed, so that a test can hold a race window open and close it
 * when it is ready. Logged when it begins. Process context; sleeps.
 */
void bwsnap_fault_pause(const unsigned int *knob, enum bwsnap_fault_kind kind,
			u32 minor, u64 block)
{
	unsigned int ms = READ_ONCE(*knob);
	unsigned long end;

	if (!ms)
		return;
	bwsnap_fault_log(kind, minor, block);
	end = jiffies + msecs_to_jiffies(ms);
	while (READ_ONCE(*knob) && time_before(jiffies, end) &&
	       !fatal_signal_pending(current))
		schedule_timeout_killable(msecs_to_jiffies(10));
}

/* seq_file positions: 0..nr-1 are records, nr is the "dropped" line. */
static void *bwsnap_faults_start(struct seq_file *m, loff_t *pos)
{
	u32 nr;

	spin_lock_irq(&bwsnap_fault_lock);
	nr = bwsnap_fault_nr;
	spin_unlock_irq(&bwsnap_fault_lock);
	return *pos <= nr ? pos : NULL;
}

static void *bwsnap_faults_next(struct seq_file *m, void *v, loff_t *pos)
{
	++*pos;
	return bwsnap_faults_start(m, pos);
}

static void bwsnap_faults_stop(struct seq_file *m, void *v)
{
}

static int bwsnap_faults_show(struct seq_file *m, void *v)
{
	loff_t pos = *(loff_t *)v;
	struct bwsnap_fault_rec rec;
	u64 dropped = 0;
	bool is_rec;

	spin_lock_irq(&bwsnap_fault_lock);
	is_rec = pos < bwsnap_fault_nr;
	if (is_rec)
		rec = bwsnap_fault_recs[pos];
	else
		dropped = bwsnap_fault_dropped;
	spin_unlock_irq(&bwsnap_fault_lock);
	if (is_rec)
		seq_printf(m, "%s minor=%u block=%llu\n",
			   bwsnap_fault_names[rec.kind], rec.minor, rec.block);
	else if (dropped)
		seq_printf(m, "dropped %llu\n", dropped);
	return 0;
}

static const struct seq_operations bwsnap_faults_sops = {
	.start = bwsnap_faults_start,
	.next = bwsnap_faults_next,
	.stop = bwsnap_faults_stop,
	.show = bwsnap_faults_show,
};

static int bwsnap_faults_open(struct inode *inode, struct file *file)
{
	return seq_open(file, &bwsnap_faults_sops);
}

static ssize_t bwsnap_faults_write(struct file *file, const char __user *buf,
				   size_t len, loff_t *ppos)
{
	spin_lock_irq(&bwsnap_fault_lock);
	bwsnap_fault_nr = 0;
	bwsnap_fault_dropped = 0;
	spin_unlock_irq(&bwsnap_fault_lock);
	return len;
}

static const struct file_operations bwsnap_faults_fops = {
	.owner = THIS_MODULE,
	.open = bwsnap_faults_open,
	.read = seq_read,
	.llseek = seq_lseek,
	.write = bwsnap_faults_write,
	.release = seq_release,
};

int bwsnap_fault_init(void)
{
	bwsnap_fault_recs = vmalloc(array_size(BWSNAP_FAULT_LOG,
					       sizeof(*bwsnap_fault_recs)));
	if (!bwsnap_fault_recs)
		return -ENOMEM;
	/* debugfs may be absent or locked down: the knobs work regardless. */
	bwsnap_debugfs_dir = debugfs_create_dir("bwsnap", NULL);
	debugfs_create_file("faults", 0600, bwsnap_debugfs_dir, NULL,
			    &bwsnap_faults_fops);
	return 0;
}

void bwsnap_fault_exit(void)
{
	debugfs_remove_recursive(bwsnap_debugfs_dir);
	vfree(bwsnap_fault_recs);
	bwsnap_fault_recs = NULL;
}
