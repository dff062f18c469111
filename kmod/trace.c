// SPDX-License-Identifier: GPL-2.0
/*
 * The read-source trace: for every 4 KiB block the snapshot device served,
 * whether it came from the COW copy, the live device, or failed. A ring of
 * BWSNAP_TRACE_EVENTS per device, filled as reads end, drained oldest first
 * by BWSNAP_IOC_TRACE. When the ring is full new events are dropped and
 * counted, so what is kept is a gap-free prefix.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/minmax.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

#include "bwsnap.h"

#define BWSNAP_TRACE_MASK	(BWSNAP_TRACE_EVENTS - 1)
/* Events copied out per lock hold. */
#define BWSNAP_TRACE_CHUNK	256

int bwsnap_trace_init(struct bwsnap_trace_ring *ring)
{
	BUILD_BUG_ON(BWSNAP_TRACE_EVENTS & BWSNAP_TRACE_MASK);
	spin_lock_init(&ring->lock);
	ring->ev = vmalloc(array_size(BWSNAP_TRACE_EVENTS, sizeof(*ring->ev)));
	if (!ring->ev)
		return -ENOMEM;
	ring->head = 0;
	ring->tail = 0;
	ring->dropped = 0;
	return 0;
}

void bwsnap_trace_free(struct bwsnap_trace_ring *ring)
{
	vfree(ring->ev);
	ring->ev = NULL;
}

void bwsnap_trace_reset(struct bwsnap_trace_ring *ring)
{
	spin_lock_irq(&ring->lock);
	ring->head = 0;
	ring->tail = 0;
	ring->dropped = 0;
	spin_unlock_irq(&ring->lock);
}

/*
 * Record @nr consecutive blocks from @block, all served the same way. Any
 * context (reads complete in interrupt context).
 */
void bwsnap_trace_add(struct bwsnap_trace_ring *ring, u64 block, u32 nr,
		      u32 source, u32 flags)
{
	unsigned long irqflags;
	u32 i;

	spin_lock_irqsave(&ring->lock, irqflags);
	for (i = 0; i < nr; i++) {
		struct bwsnap_trace_event *ev;

		if (ring->head - ring->tail >= BWSNAP_TRACE_EVENTS) {
			ring->dropped += nr - i;
			break;
		}
		ev = &ring->ev[ring->head & BWSNAP_TRACE_MASK];
		ev->block = block + i;
		ev->source = source;
		ev->flags = flags;
		ring->head++;
	}
	spin_unlock_irqrestore(&ring->lock, irqflags);
}

/*
 * Copy up to @capacity events to @buf and consume them. Single consumer:
 * the caller holds the device's ctl_lock. Events are consumed only once they
 * reached user space, so a fault loses nothing.
 */
int bwsnap_trace_drain(struct bwsnap_trace_ring *ring,
		       struct bwsnap_trace_event __user *buf, u32 capacity,
		       u32 *copied, u64 *dropped)
{
	struct bwsnap_trace_event *chunk;
	u32 done = 0;
	int err = 0;

	chunk = kmalloc_array(BWSNAP_TRACE_CHUNK, sizeof(*chunk), GFP_KERNEL);
	if (!chunk)
		return -ENOMEM;
	while (done < capacity) {
		u32 n, i;
		u64 tail;

		spin_lock_irq(&ring->lock);
		tail = ring->tail;
		n = min3((u64)(capacity - done), ring->head - tail,
			 (u64)BWSNAP_TRACE_CHUNK);
		for (i = 0; i < n; i++)
			chunk[i] = ring->ev[(tail + i) & BWSNAP_TRACE_MASK];
		spin_unlock_irq(&ring->lock);
		if (!n)
			break;
		if (copy_to_user(buf + done, chunk, n * sizeof(*chunk))) {
			err = -EFAULT;
			break;
		}
		spin_lock_irq(&ring->lock);
		ring->tail = tail + n;
		spin_unlock_irq(&ring->lock);
		done += n;
	}
	kfree(chunk);
	if (err)
		return err;
	spin_lock_irq(&ring->lock);
	*dropped = ring->dropped;
	ring->dropped = 0;
	spin_unlock_irq(&ring->lock);
	*copied = done;
	return 0;
}
