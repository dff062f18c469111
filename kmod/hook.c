// SPDX-License-Identifier: GPL-2.0
/*
 * The write interception point: an ftrace hook on submit_bio_noacct() and
 * the RCU-published table of tracked block devices it consults.
 *
 * Why submit_bio_noacct, and why ftrace (the full argument is in README.md):
 * virtio-blk and every other blk-mq driver have no ->submit_bio of their own
 * to wrap, and swapping a gendisk's fops under a mounted filesystem is not
 * safe. Every bio entering the block layer for a device goes through
 * submit_bio_noacct() (submit_bio() calls it), it is exported, and it is
 * traceable on Debian's 6.1 and 6.12 kernels. The ftrace callback looks the
 * bio's bdev up in the table; for an untracked device, or a read, it returns
 * and the call proceeds untouched. For a write to a tracked device it moves
 * the saved instruction pointer to bwsnap_hook_submit(), which then runs
 * instead of submit_bio_noacct with the same argument and return address.
 *
 * Bios the module submits must not be caught again. Its own bios (COW
 * copies, snapshot reads) come from the device's bio_set and are known by
 * bio->bi_pool: that also holds for the rest of one the block layer split
 * and resubmitted itself, from outside the module. The filesystem's writes
 * the module held and now lets go are known by the call: the callback lets
 * every call whose return address (parent_ip) lies inside this module
 * through. That only holds if such calls are real calls, never tail calls:
 * they all go through bwsnap_submit_passthrough(), which has work after the
 * call.
 *
 * Lifetime: the hook looks a device up under rcu_read_lock() and, before
 * unlocking, bwsnap_io_intercept() has taken the counts (passing, inflight)
 * that keep the device alive for whatever the hook still does with it.
 * Closing unpublishes the device, waits a grace period, then drains those
 * counts.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/ftrace.h>
#include <linux/module.h>
#include <linux/rcupdate.h>
#include <linux/slab.h>

#include "bwsnap.h"

struct bwsnap_hook_entry {
	struct block_device *bdev;
	struct bwsnap_dev *dev;
};

struct bwsnap_hook_table {
	struct rcu_head rcu;
	unsigned int nr;
	struct bwsnap_hook_entry ent[BWSNAP_MAX_MINORS];
};

/* Serialises table replacements (minors set up and torn down in parallel). */
static DEFINE_MUTEX(bwsnap_hook_lock);
/* RCU-published; replaced (never edited) under bwsnap_hook_lock. */
static struct bwsnap_hook_table __rcu *bwsnap_table;

/*
 * Threads inside bwsnap_hook_submit(). A thread may sleep in there (the
 * pass-through submit_bio_noacct() can wait for tags), so module exit waits
 * for this to reach zero before the text can go away.
 */
static atomic_t bwsnap_hook_inflight = ATOMIC_INIT(0);

static bool bwsnap_hook_registered;

/* Caller holds rcu_read_lock(). */
static __always_inline struct bwsnap_dev *
bwsnap_hook_lookup(struct block_device *bdev)
{
	struct bwsnap_hook_table *t = rcu_dereference(bwsnap_table);
	unsigned int i;

	if (!t)
		return NULL;
	for (i = 0; i < t->nr; i++)
		if (t->ent[i].bdev == bdev)
			return t->ent[i].dev;
	return NULL;
}

/*
 * Submit @bio past the hook. noinline and the barrier after the call keep
 * the call a real one, so that parent_ip is inside this module.
 */
noinline void bwsnap_submit_passthrough(struct bio *bio)
{
	submit_bio_noacct(bio);
	barrier();
}

/*
 * Runs in place of submit_bio_noacct() for writes the callback chose, with
 * its argument and return address and in its context (which may sleep, as
 * submit_bio_noacct() may; current->bio_list may be active). The device may
 * have gone since (destroy): look it up again.
 */
static void bwsnap_hook_submit(struct bio *bio)
{
	enum bwsnap_verdict verdict = BWSNAP_PASS;
	struct bwsnap_todo todo;
	struct bwsnap_dev *dev;

	atomic_inc(&bwsnap_hook_inflight);
	INIT_LIST_HEAD(&todo.start);
	rcu_read_lock();
	dev = bwsnap_hook_lookup(bio->bi_bdev);
	if (dev)
		verdict = bwsnap_io_intercept(dev, bio, &todo);
	rcu_read_unlock();
	if (dev)
		bwsnap_io_followup(dev, bio, verdict, &todo);
	else
		bwsnap_submit_passthrough(bio);
	atomic_dec(&bwsnap_hook_inflight);
}

static void notrace bwsnap_hook_ftrace(unsigned long ip,
				       unsigned long parent_ip,
				       struct ftrace_ops *ops,
				       struct ftrace_regs *fregs)
{
	struct pt_regs *regs = bwsnap_ftrace_regs(fregs);
	struct bwsnap_dev *dev;
	struct bio *bio;
	bool redirect;

	if (unlikely(!regs) || within_module(parent_ip, THIS_MODULE))
		return;
	bio = (struct bio *)regs->di;	/* first argument, x86-64 ABI */
	if (!op_is_write(bio_op(bio)))
		return;
	rcu_read_lock();
	dev = bwsnap_hook_lookup(bio->bi_bdev);
	/* Our own bio, or the rest of one the block layer split: pass. */
	redirect = dev && bio->bi_pool != &dev->bs;
	rcu_read_unlock();
	if (redirect)
		regs->ip = (unsigned long)bwsnap_hook_submit;
}

/*
 * No FTRACE_OPS_FL_RECURSION: the callback calls nothing that is traced by
 * this ops (it is filtered to submit_bio_noacct alone and never calls it),
 * so it cannot recurse, and it is spared ftrace's assist wrapper.
 */
static struct ftrace_ops bwsnap_ftrace_ops = {
	.func = bwsnap_hook_ftrace,
	.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_IPMODIFY,
};

/*
 * Replace the table: @add joins, @remove leaves (either may be NULL).
 * Process context; sleeps. Caller holds the ctl_lock of @add or @remove.
 */
int bwsnap_hook_publish(struct bwsnap_dev *add, struct bwsnap_dev *remove)
{
	struct bwsnap_hook_table *old, *new;
	unsigned int i;

	/* Removal (destroy) must not fail; the table is small. */
	new = kzalloc(sizeof(*new), add ? GFP_KERNEL : GFP_KERNEL | __GFP_NOFAIL);
	if (!new)
		return -ENOMEM;
	mutex_lock(&bwsnap_hook_lock);
	old = rcu_dereference_protected(bwsnap_table,
					lockdep_is_held(&bwsnap_hook_lock));
	for (i = 0; old && i < old->nr; i++)
		if (old->ent[i].dev != remove)
			new->ent[new->nr++] = old->ent[i];
	if (add) {
		if (WARN_ON(new->nr >= BWSNAP_MAX_MINORS)) {
			mutex_unlock(&bwsnap_hook_lock);
			kfree(new);
			return -EBUSY;
		}
		new->ent[new->nr].bdev = add->bdev;
		new->ent[new->nr].dev = add;
		new->nr++;
	}
	rcu_assign_pointer(bwsnap_table, new);
	mutex_unlock(&bwsnap_hook_lock);
	/*
	 * After this no hook invocation can still see @remove: what one took
	 * on it (passing, inflight) is counted, and the caller drains that.
	 */
	synchronize_rcu();
	kfree(old);
	return 0;
}

int bwsnap_hook_init(void)
{
	unsigned long ip = (unsigned long)submit_bio_noacct;
	int err;

	err = ftrace_set_filter_ip(&bwsnap_ftrace_ops, ip, 0, 0);
	if (err) {
		pr_err("cannot filter ftrace on submit_bio_noacct: %d\n", err);
		return err;
	}
	err = register_ftrace_function(&bwsnap_ftrace_ops);
	if (err) {
		pr_err("cannot register the ftrace hook (IPMODIFY taken by livepatch?): %d\n",
		       err);
		ftrace_set_filter_ip(&bwsnap_ftrace_ops, ip, 1, 0);
		return err;
	}
	bwsnap_hook_registered = true;
	return 0;
}

/* Module exit: no device is in use any more (each one pins the module). */
void bwsnap_hook_exit(void)
{
	struct bwsnap_hook_table *t;

	if (bwsnap_hook_registered) {
		unregister_ftrace_function(&bwsnap_ftrace_ops);
		ftrace_set_filter_ip(&bwsnap_ftrace_ops,
				     (unsigned long)submit_bio_noacct, 1, 0);
		bwsnap_hook_registered = false;
	}
	/*
	 * Threads redirected before the unregister may still be in our text:
	 * preempted before bwsnap_hook_submit() counted them, inside it (maybe
	 * asleep in the pass-through call), or preempted after it uncounted
	 * them. RCU-tasks waits until every task has passed a voluntary context
	 * switch, which in our text happens only inside the counted region: so
	 * wait for the uncounted ones to move on, for the counted ones to
	 * leave, and once more for the last instructions after the count.
	 */
	synchronize_rcu_tasks();
	while (atomic_read(&bwsnap_hook_inflight))
		schedule_timeout_uninterruptible(1);
	synchronize_rcu_tasks();
	t = rcu_dereference_protected(bwsnap_table, true);
	RCU_INIT_POINTER(bwsnap_table, NULL);
	kfree(t);
}
