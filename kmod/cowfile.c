// SPDX-License-Identifier: GPL-2.0
/*
 * The COW store: a preallocated file on the snapshotted filesystem, written
 * behind the filesystem's back in 4 KiB slots.
 *
 * Creation (process context, in the SETUP/TO_SNAPSHOT caller):
 *  1. create the file (O_EXCL) and check it lives on the tracked device;
 *  2. preallocate it: vfs_fallocate(), or where the filesystem cannot
 *     (ext2, also when the ext4 driver mounts it: non-extent inodes say
 *     EOPNOTSUPP) write zeros; then fsync so allocation and the page cache
 *     are settled before anything is written behind them;
 *  3. find its device extents with the filesystem's ->fiemap(). bmap() alone
 *     is no use here: it does not map unwritten (fallocated) extents.
 *     ->fiemap() writes to a user pointer, so the extents land in a buffer
 *     mapped with vm_mmap() in the caller's address space, are copied into
 *     kernel memory and the mapping goes. Another thread of the caller can
 *     rewrite that buffer meanwhile, so what came back is then checked
 *     against the file's own allocation without user memory (see
 *     bwsnap_cowfile_verify());
 *  4. make it immutable in memory (no write, truncate, unlink or chattr-less
 *     change while tracked) and keep it open;
 *  5. cut each extent into whole 4 KiB slots (they may start at any 512-byte
 *     offset: ext2 with 1 KiB blocks) and size the block -> slot index.
 *
 * The file never grows: slots run out -> -ENOSPC, and the I/O path fails the
 * snapshot. The index is allocated in full up front (one entry per slot), so
 * the I/O path never allocates memory for it. Copies complete in any order
 * and on any CPU: reserve, commit and lookup run under the lock the store
 * was created with (the device's dev->lock).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fiemap.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/hash.h>
#include <linux/log2.h>
#include <linux/magic.h>
#include <linux/mman.h>
#include <linux/mm.h>
#include <linux/mount.h>
#include <linux/namei.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "bwsnap.h"

#define BWSNAP_ZERO_CHUNK	(1U << 20)
/* Extent flags that make fe_physical meaningless for raw device I/O. */
#define BWSNAP_FIEMAP_BAD	(FIEMAP_EXTENT_UNKNOWN | \
				 FIEMAP_EXTENT_DELALLOC | \
				 FIEMAP_EXTENT_ENCODED | \
				 FIEMAP_EXTENT_NOT_ALIGNED | \
				 FIEMAP_EXTENT_DATA_INLINE | \
				 FIEMAP_EXTENT_DATA_TAIL | \
				 FIEMAP_EXTENT_SHARED)

struct bwsnap_cowfile {
	struct bwsnap_store store;
	struct file *file;
	struct bwsnap_cow_extent *ext;	/* in file order; const after create */
	u32 nr_ext;
	u64 nr_slots;
	spinlock_t *lock;		/* the caller's: serialises the fields below */
	u64 next_slot;			/* lock */
	u64 used;			/* lock to write; usage() reads it: *_ONCE */
	/*
	 * Index, lock: slot_block[s] is the block slot s holds a copy of;
	 * bucket[] heads and next[] chains hold slot + 1 (0 ends a chain), so
	 * only committed slots are reachable.
	 */
	u64 *slot_block;
	u32 *next;
	u32 *bucket;
	unsigned int hash_bits;
};

static inline struct bwsnap_cowfile *to_cowfile(struct bwsnap_store *store)
{
	return container_of(store, struct bwsnap_cowfile, store);
}

static sector_t bwsnap_cowfile_slot_sector(struct bwsnap_cowfile *cf, u64 slot)
{
	u32 lo = 0, hi = cf->nr_ext;
	const struct bwsnap_cow_extent *e;

	/* First extent whose slots end after @slot. */
	while (lo < hi) {
		u32 mid = lo + (hi - lo) / 2;

		e = &cf->ext[mid];
		if (e->first_slot + e->nr_slots <= slot)
			lo = mid + 1;
		else
			hi = mid;
	}
	e = &cf->ext[lo];
	return (e->physical + ((slot - e->first_slot) << BWSNAP_BLOCK_SHIFT)) >>
	       SECTOR_SHIFT;
}

static int bwsnap_cowfile_reserve(struct bwsnap_store *store, u64 block,
				  u64 *slot, sector_t *sector)
{
	struct bwsnap_cowfile *cf = to_cowfile(store);

	lockdep_assert_held(cf->lock);
	if (cf->next_slot >= cf->nr_slots)
		return -ENOSPC;
	*slot = cf->next_slot++;
	cf->slot_block[*slot] = block;
	*sector = bwsnap_cowfile_slot_sector(cf, *slot);
	return 0;
}

static void bwsnap_cowfile_commit(struct bwsnap_store *store, u64 slot,
				  u64 block)
{
	struct bwsnap_cowfile *cf = to_cowfile(store);
	u32 h = hash_64(block, cf->hash_bits);

	lockdep_assert_held(cf->lock);
	cf->next[slot] = cf->bucket[h];
	cf->bucket[h] = slot + 1;
	WRITE_ONCE(cf->used, cf->used + 1);
}

static bool bwsnap_cowfile_lookup(struct bwsnap_store *store, u64 block,
				  sector_t *sector)
{
	struct bwsnap_cowfile *cf = to_cowfile(store);
	u32 s;

	lockdep_assert_held(cf->lock);
	for (s = cf->bucket[hash_64(block, cf->hash_bits)]; s;
	     s = cf->next[s - 1]) {
		if (cf->slot_block[s - 1] == block) {
			*sector = bwsnap_cowfile_slot_sector(cf, s - 1);
			return true;
		}
	}
	return false;
}

static void bwsnap_cowfile_usage(struct bwsnap_store *store, u64 *total,
				 u64 *used)
{
	struct bwsnap_cowfile *cf = to_cowfile(store);

	*total = cf->nr_slots << BWSNAP_BLOCK_SHIFT;
	*used = READ_ONCE(cf->used) << BWSNAP_BLOCK_SHIFT;
}

static const struct bwsnap_cow_extent *
bwsnap_cowfile_extents(struct bwsnap_store *store, u32 *count)
{
	struct bwsnap_cowfile *cf = to_cowfile(store);

	*count = cf->nr_ext;
	return cf->ext;
}

static void bwsnap_cowfile_for_each_written(struct bwsnap_store *store,
					    void (*fn)(void *arg, u64 physical,
						       u64 length),
					    void *arg)
{
	struct bwsnap_cowfile *cf = to_cowfile(store);
	u32 i;

	/* Slots are handed out in order: [0, next_slot) were written. */
	for (i = 0; i < cf->nr_ext; i++) {
		const struct bwsnap_cow_extent *e = &cf->ext[i];
		u64 n;

		if (cf->next_slot <= e->first_slot)
			break;
		n = min(cf->next_slot - e->first_slot, e->nr_slots);
		if (n)
			fn(arg, e->physical, n << BWSNAP_BLOCK_SHIFT);
	}
}

static void bwsnap_cowfile_set_immutable(struct file *file, bool on)
{
	struct inode *inode = file_inode(file);

	inode_lock(inode);
	if (on)
		inode->i_flags |= S_IMMUTABLE;
	else
		inode->i_flags &= ~S_IMMUTABLE;
	inode_unlock(inode);
}

static void bwsnap_cowfile_free_index(struct bwsnap_cowfile *cf)
{
	kvfree(cf->bucket);
	kvfree(cf->next);
	kvfree(cf->slot_block);
}

static void bwsnap_cowfile_release(struct bwsnap_store *store)
{
	struct bwsnap_cowfile *cf = to_cowfile(store);

	bwsnap_cowfile_set_immutable(cf->file, false);
	fput(cf->file);
	bwsnap_cowfile_free_index(cf);
	kvfree(cf->ext);
	kfree(cf);
}

static const struct bwsnap_store_ops bwsnap_cowfile_ops = {
	.reserve = bwsnap_cowfile_reserve,
	.commit = bwsnap_cowfile_commit,
	.lookup = bwsnap_cowfile_lookup,
	.usage = bwsnap_cowfile_usage,
	.extents = bwsnap_cowfile_extents,
	.for_each_written = bwsnap_cowfile_for_each_written,
	.release = bwsnap_cowfile_release,
};

/* ---- creation ---- */

/*
 * Filesystems whose fiemap addresses are byte offsets on sb->s_bdev, and
 * that leave a fallocated file's blocks where they are. Not btrfs (logical
 * addresses, may span devices, copies on write), not a network or stacked
 * filesystem.
 */
static bool bwsnap_cowfile_fs_ok(struct super_block *sb)
{
	return sb->s_magic == EXT4_SUPER_MAGIC ||	/* ext2, ext3, ext4 */
	       sb->s_magic == XFS_SUPER_MAGIC;
}

/*
 * Creating the file on a frozen filesystem would block this ioctl, uninterruptibly,
 * until someone thaws it: refuse instead. (A freeze that starts right after this check
 * still blocks; the agent freezes only after SETUP.)
 */
static int bwsnap_cowfile_check_unfrozen(const char *path)
{
	struct path dir;
	char *name, *slash;
	int err;

	name = kstrdup(path, GFP_KERNEL);
	if (!name)
		return -ENOMEM;
	slash = strrchr(name, '/');
	if (!slash) {
		kfree(name);
		return 0;
	}
	slash[slash == name ? 1 : 0] = '\0';
	err = kern_path(name, LOOKUP_FOLLOW, &dir);
	kfree(name);
	if (err)
		return 0;	/* filp_open() reports the real problem */
	if (sb_start_write_trylock(dir.dentry->d_sb))
		sb_end_write(dir.dentry->d_sb);
	else
		err = -EBUSY;
	path_put(&dir);
	return err;
}

static struct file *bwsnap_cowfile_open(struct block_device *bdev,
					const char *path)
{
	struct path existing;
	struct file *file;
	int err;

	/* Name the usual mistakes precisely rather than by O_EXCL's EEXIST. */
	err = kern_path(path, LOOKUP_FOLLOW, &existing);
	if (!err) {
		bool dir = d_is_dir(existing.dentry);

		path_put(&existing);
		pr_err("COW file %s already exists%s\n", path,
		       dir ? " and is a directory" : "");
		return ERR_PTR(dir ? -EISDIR : -EEXIST);
	}
	err = bwsnap_cowfile_check_unfrozen(path);
	if (err) {
		pr_err("cannot create COW file %s: its filesystem is frozen\n",
		       path);
		return ERR_PTR(err);
	}
	file = filp_open(path, O_RDWR | O_CREAT | O_EXCL | O_LARGEFILE, 0600);
	if (IS_ERR(file)) {
		pr_err("cannot create COW file %s: %ld\n", path, PTR_ERR(file));
		return file;
	}
	if (!S_ISREG(file_inode(file)->i_mode)) {
		fput(file);
		return ERR_PTR(-EINVAL);
	}
	return file;
}

/* Undo a creation that failed later on: remove the name we created. */
static void bwsnap_cowfile_unlink(struct file *file)
{
	struct dentry *dentry = file->f_path.dentry;
	struct dentry *parent;
	struct inode *dir;
	int err;

	err = mnt_want_write(file->f_path.mnt);
	if (err)
		goto out;
	/*
	 * Our own reference, as a lookup would hold: with only the file's,
	 * d_delete() would turn the dentry negative under the open file.
	 */
	dget(dentry);
	parent = dget_parent(dentry);
	dir = d_inode(parent);
	inode_lock_nested(dir, I_MUTEX_PARENT);
	if (dentry->d_parent == parent && !d_unhashed(dentry))
		err = vfs_unlink(bwsnap_file_idmap(file), dir, dentry, NULL);
	else
		err = -ENOENT;
	inode_unlock(dir);
	dput(parent);
	dput(dentry);
	mnt_drop_write(file->f_path.mnt);
out:
	if (err)
		pr_warn("cannot remove %pD after a failed setup: %d\n", file, err);
}

static int bwsnap_cowfile_zero_fill(struct file *file, u64 size)
{
	loff_t pos = 0;
	void *zeros;
	int err = 0;

	zeros = kvzalloc(BWSNAP_ZERO_CHUNK, GFP_KERNEL);
	if (!zeros)
		return -ENOMEM;
	while (pos < size) {
		size_t n = min_t(u64, size - pos, BWSNAP_ZERO_CHUNK);
		ssize_t w = kernel_write(file, zeros, n, &pos);

		if (w < 0) {
			err = w;
			break;
		}
		if (w == 0) {
			err = -EIO;
			break;
		}
		if (fatal_signal_pending(current)) {
			err = -EINTR;
			break;
		}
		cond_resched();
	}
	kvfree(zeros);
	return err;
}

static int bwsnap_cowfile_fill(struct file *file, u64 size)
{
	int err;

	err = vfs_fallocate(file, 0, 0, size);
	if (err == -EOPNOTSUPP)
		err = bwsnap_cowfile_zero_fill(file, size);
	if (err) {
		pr_err("cannot preallocate %llu bytes for %pD: %d\n", size, file,
		       err);
		return err;
	}
	/* Settle the allocation and write back any page cache now. */
	err = vfs_fsync(file, 0);
	if (err)
		pr_err("cannot sync %pD: %d\n", file, err);
	return err;
}

/*
 * Run ->fiemap over [start, start + len) into user memory at @ubuf (@max
 * entries; 0 only counts, and then writes nothing anywhere). Returns the
 * number of extents found, or -errno.
 */
static long bwsnap_cowfile_fiemap(struct inode *inode, u64 start, u64 len,
				  struct fiemap_extent __user *ubuf, u32 max)
{
	struct fiemap_extent_info fi = {
		.fi_flags = FIEMAP_FLAG_SYNC,
		.fi_extents_max = max,
		.fi_extents_start = ubuf,
	};
	int err;

	err = inode->i_op->fiemap(inode, &fi, start, len);
	if (err)
		return err;
	return fi.fi_extents_mapped;
}

/*
 * Turn fiemap output into merged, checked extents with slots. *@used: how
 * many of @fe cover the file.
 */
static int bwsnap_cowfile_build(struct bwsnap_cowfile *cf,
				const struct fiemap_extent *fe, u32 nr,
				u64 size, u64 dev_bytes, u32 *used)
{
	u64 logical = 0, slots = 0;
	u32 i, n = 0;

	cf->ext = kvcalloc(max(nr, 1U), sizeof(*cf->ext), GFP_KERNEL);
	if (!cf->ext)
		return -ENOMEM;
	for (i = 0; i < nr && logical < size; i++) {
		u64 len;

		if (fe[i].fe_flags & BWSNAP_FIEMAP_BAD) {
			pr_err("COW extent %u has flags %#x: no raw device address\n",
			       i, fe[i].fe_flags);
			return -EOPNOTSUPP;
		}
		if (fe[i].fe_logical != logical) {
			pr_err("COW file has a hole at %llu\n", logical);
			return -EIO;
		}
		len = min(fe[i].fe_length, size - logical);
		if (!IS_ALIGNED(fe[i].fe_physical | len, SECTOR_SIZE) ||
		    fe[i].fe_physical + len > dev_bytes) {
			pr_err("COW extent %u (%llu+%llu) unusable\n", i,
			       fe[i].fe_physical, len);
			return -EIO;
		}
		if (n && cf->ext[n - 1].physical + cf->ext[n - 1].length ==
		    fe[i].fe_physical) {
			cf->ext[n - 1].length += len;
		} else {
			cf->ext[n].physical = fe[i].fe_physical;
			cf->ext[n].length = len;
			n++;
		}
		logical += len;
	}
	if (logical != size) {
		pr_err("COW file mapped to %llu of %llu bytes\n", logical, size);
		return -EIO;
	}
	*used = i;
	for (i = 0; i < n; i++) {
		cf->ext[i].first_slot = slots;
		cf->ext[i].nr_slots = cf->ext[i].length >> BWSNAP_BLOCK_SHIFT;
		slots += cf->ext[i].nr_slots;
	}
	if (!slots || slots >= U32_MAX) {
		pr_err("COW file holds %llu slots\n", slots);
		return -EINVAL;
	}
	cf->nr_ext = n;
	cf->nr_slots = slots;
	return 0;
}

/*
 * Is logical block @lblock of the file at byte @phys of the device? bmap()
 * asks the filesystem without user memory; it maps written blocks only.
 */
static int bwsnap_cowfile_check_block(struct inode *inode, u64 lblock,
				      u64 phys)
{
	sector_t b = lblock;
	int err;

	err = bmap(inode, &b);
	if (err)
		return err;
	if (!b || (u64)b << inode->i_blkbits != phys)
		return -EIO;
	return 0;
}

/* Write one filesystem block of zeros at logical block @lblock. */
static int bwsnap_cowfile_touch(struct file *file, u64 lblock, void *zeros)
{
	unsigned int bs = i_blocksize(file_inode(file));
	loff_t pos = lblock * bs;
	ssize_t w = kernel_write(file, zeros, bs, &pos);

	if (w < 0)
		return w;
	return w == bs ? 0 : -EIO;
}

/*
 * Check the extents that came back through user memory against the file's
 * own allocation, asked again without user memory. Each must be a single
 * extent of the file as the filesystem sees it (->fiemap in counting mode
 * writes nothing), and its first and last filesystem blocks must be where
 * it says (bmap(); an unwritten block is first written through the file,
 * which makes it a mapped one). Then all of it is the file's, at that
 * address. The file is not immutable yet.
 */
static int bwsnap_cowfile_verify(struct bwsnap_cowfile *cf,
				 const struct fiemap_extent *fe, u32 nr,
				 u64 size)
{
	struct inode *inode = file_inode(cf->file);
	unsigned int bits = inode->i_blkbits;
	bool touched = false;
	void *zeros;
	int err = 0;
	u32 i, e;

	for (i = 0; i < nr; i++) {
		u64 len = min(fe[i].fe_length, size - fe[i].fe_logical);
		long n = bwsnap_cowfile_fiemap(inode, fe[i].fe_logical, len,
					       NULL, 0);

		if (n != 1) {
			pr_err("COW extent %u (%llu+%llu) is not one extent of the file (%ld)\n",
			       i, fe[i].fe_logical, len, n);
			return n < 0 ? n : -EIO;
		}
	}
	zeros = kzalloc(i_blocksize(inode), GFP_KERNEL);
	if (!zeros)
		return -ENOMEM;
	for (i = 0; i < nr && !err; i++) {
		u64 len = min(fe[i].fe_length, size - fe[i].fe_logical);
		u64 ends[2] = { fe[i].fe_logical >> bits,
				(fe[i].fe_logical + len - 1) >> bits };

		for (e = 0; e < 2 && !err; e++) {
			sector_t b = ends[e];

			err = bmap(inode, &b);
			if (!err && !b) {
				err = bwsnap_cowfile_touch(cf->file, ends[e], zeros);
				touched = true;
			}
		}
	}
	kfree(zeros);
	if (!err && touched)
		err = vfs_fsync(cf->file, 0);
	for (i = 0; i < nr && !err; i++) {
		u64 len = min(fe[i].fe_length, size - fe[i].fe_logical);
		u64 first = fe[i].fe_logical >> bits;
		u64 last = (fe[i].fe_logical + len - 1) >> bits;

		err = bwsnap_cowfile_check_block(inode, first, fe[i].fe_physical +
						 ((first << bits) - fe[i].fe_logical));
		if (!err)
			err = bwsnap_cowfile_check_block(inode, last,
							 fe[i].fe_physical +
							 ((last << bits) - fe[i].fe_logical));
		if (err)
			pr_err("COW extent %u (%llu+%llu at %llu) is not where the file is: %d\n",
			       i, fe[i].fe_logical, len, fe[i].fe_physical, err);
	}
	return err;
}

/*
 * The file's extents: reported by ->fiemap into a user buffer, copied into
 * kernel memory at once (the mapping goes), then checked.
 */
static int bwsnap_cowfile_map(struct bwsnap_cowfile *cf, u64 size,
			      u64 dev_bytes, u32 minor)
{
	struct inode *inode = file_inode(cf->file);
	struct fiemap_extent *fe;
	unsigned long ubuf;
	size_t bytes;
	u32 used = 0;
	long nr;
	int err;

	if (!inode->i_op->fiemap) {
		pr_err("filesystem of %pD has no fiemap\n", cf->file);
		return -EOPNOTSUPP;
	}
	/* Count first, with no buffer, then fetch them all at once. */
	nr = bwsnap_cowfile_fiemap(inode, 0, size, NULL, 0);
	if (nr < 0)
		return nr;
	if (!nr)
		return -EIO;
	fe = kvmalloc_array(nr, sizeof(*fe), GFP_KERNEL);
	if (!fe)
		return -ENOMEM;
	bytes = PAGE_ALIGN(nr * sizeof(*fe));
	ubuf = vm_mmap(NULL, 0, bytes, PROT_READ | PROT_WRITE,
		       MAP_ANONYMOUS | MAP_PRIVATE, 0);
	if (IS_ERR_VALUE(ubuf)) {
		err = (int)ubuf;
		goto out_free;
	}
	nr = bwsnap_cowfile_fiemap(inode, 0, size,
				   (struct fiemap_extent __user *)ubuf, nr);
	bwsnap_fault_pause(&bwsnap_fault_delay_extents_ms,
			   BWSNAP_FAULT_DELAY_EXTENTS, minor, 0);
	err = nr < 0 ? nr : 0;
	if (!err && copy_from_user(fe, (void __user *)ubuf, nr * sizeof(*fe)))
		err = -EFAULT;
	vm_munmap(ubuf, bytes);
	if (!err)
		err = bwsnap_cowfile_build(cf, fe, nr, size, dev_bytes, &used);
	if (!err)
		err = bwsnap_cowfile_verify(cf, fe, used, size);
out_free:
	kvfree(fe);
	return err;
}

static int bwsnap_cowfile_alloc_index(struct bwsnap_cowfile *cf)
{
	cf->hash_bits = max_t(unsigned int, 10,
			      ilog2(roundup_pow_of_two(cf->nr_slots)));
	cf->slot_block = kvmalloc_array(cf->nr_slots, sizeof(u64), GFP_KERNEL);
	cf->next = kvmalloc_array(cf->nr_slots, sizeof(u32), GFP_KERNEL);
	cf->bucket = kvcalloc(1UL << cf->hash_bits, sizeof(u32), GFP_KERNEL);
	if (!cf->slot_block || !cf->next || !cf->bucket) {
		bwsnap_cowfile_free_index(cf);
		return -ENOMEM;
	}
	return 0;
}

/*
 * Create, preallocate and map the COW file at @path (which must not exist)
 * on the filesystem mounted from @bdev. @size: bytes, a non-zero multiple
 * of the block size. @lock: what serialises reserve, commit and lookup.
 * Process context with a user address space (ioctl).
 */
struct bwsnap_store *bwsnap_cowfile_create(struct block_device *bdev,
					   const char *path, u64 size,
					   spinlock_t *lock, u32 minor)
{
	struct bwsnap_cowfile *cf;
	int err;

	if (!size || !IS_ALIGNED(size, BWSNAP_BLOCK_SIZE))
		return ERR_PTR(-EINVAL);
	if (!current->mm)
		return ERR_PTR(-EINVAL);
	cf = kzalloc(sizeof(*cf), GFP_KERNEL);
	if (!cf)
		return ERR_PTR(-ENOMEM);
	cf->store.ops = &bwsnap_cowfile_ops;
	cf->lock = lock;

	cf->file = bwsnap_cowfile_open(bdev, path);
	if (IS_ERR(cf->file)) {
		err = PTR_ERR(cf->file);
		goto err_open;
	}
	if (file_inode(cf->file)->i_sb->s_bdev != bdev) {
		pr_err("COW file %s is not on %pg\n", path, bdev);
		err = -EXDEV;
		goto err_fill;
	}
	if (!bwsnap_cowfile_fs_ok(file_inode(cf->file)->i_sb)) {
		pr_err("COW file %s: filesystem %s not supported\n", path,
		       file_inode(cf->file)->i_sb->s_type->name);
		err = -EOPNOTSUPP;
		goto err_fill;
	}
	err = bwsnap_cowfile_fill(cf->file, size);
	if (err)
		goto err_fill;
	err = bwsnap_cowfile_map(cf, size, bdev_nr_bytes(bdev), minor);
	if (err) {
		pr_err("cannot map the extents of %s: %d\n", path, err);
		goto err_map;
	}
	err = bwsnap_cowfile_alloc_index(cf);
	if (err)
		goto err_map;
	bwsnap_cowfile_set_immutable(cf->file, true);
	return &cf->store;

err_map:
	kvfree(cf->ext);
err_fill:
	bwsnap_cowfile_unlink(cf->file);
	fput(cf->file);
err_open:
	kfree(cf);
	return ERR_PTR(err);
}
