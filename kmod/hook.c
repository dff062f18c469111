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
 * Bios the module submits itself (COW copies, snapshot reads, held writes
 * let go) must not be caught again: the callback lets every call whose
 * return address (parent_ip) lies inside this module through. That only
 * holds if such calls are real calls, never tail calls: they all go through
 * bwsnap_submit_passthrough(), which has work after the call.
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

/* RCU-published; replaced (never edited) under bwsnap_ctl_mutex. */
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
 * Runs in place of submit_bio_noacct() for writes the callback chose. The
 * device may have gone since (destroy): look it up again. May sleep only in
 * the pass-through call, like submit_bio_noacct() itself.
 */
static void bwsnap_hook_submit(struct bio *bio)
{
	enum bwsnap_verdict verdict = BWSNAP_PASS;
	struct bwsnap_dev *dev;

	atomic_inc(&bwsnap_hook_inflight);
	rcu_read_lock();
	dev = bwsnap_hook_lookup(bio->bi_bdev);
	if (dev)
		verdict = bwsnap_io_intercept(dev, bio);
	rcu_read_unlock();
	if (verdict == BWSNAP_PASS)
		bwsnap_submit_passthrough(bio);
	atomic_dec(&bwsnap_hook_inflight);
}

static void notrace bwsnap_hook_ftrace(unsigned long ip,
				       unsigned long parent_ip,
				       struct ftrace_ops *ops,
				       struct ftrace_regs *fregs)
{
	struct pt_regs *regs = bwsnap_ftrace_regs(fregs);
	struct bio *bio;
	bool tracked;

	if (unlikely(!regs) || within_module(parent_ip, THIS_MODULE))
		return;
	bio = (struct bio *)regs->di;	/* first argument, x86-64 ABI */
	if (!op_is_write(bio_op(bio)))
		return;
	rcu_read_lock();
	tracked = bwsnap_hook_lookup(bio->bi_bdev);
	rcu_read_unlock();
	if (tracked)
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

int bwsnap_hook_publish(struct bwsnap_dev *add, struct bwsnap_dev *remove)
{
	struct bwsnap_hook_table *old, *new;
	unsigned int i;

	lockdep_assert_held(&bwsnap_ctl_mutex);
	old = rcu_dereference_protected(bwsnap_table,
					lockdep_is_held(&bwsnap_ctl_mutex));
	/* Removal (destroy) must not fail; the table is small. */
	new = kzalloc(sizeof(*new), add ? GFP_KERNEL : GFP_KERNEL | __GFP_NOFAIL);
	if (!new)
		return -ENOMEM;
	for (i = 0; old && i < old->nr; i++)
		if (old->ent[i].dev != remove)
			new->ent[new->nr++] = old->ent[i];
	if (add) {
		if (WARN_ON(new->nr >= BWSNAP_MAX_MINORS)) {
			kfree(new);
			return -EBUSY;
		}
		new->ent[new->nr].bdev = add->bdev;
		new->ent[new->nr].dev = add;
		new->nr++;
	}
	rcu_assign_pointer(bwsnap_table, new);
	/*
	 * After this no hook invocation can still see @remove: the caller may
	 * free it once its queue is drained.
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
