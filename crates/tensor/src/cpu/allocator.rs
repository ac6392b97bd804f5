//! The C allocator's settings for tensor work. A training step allocates and frees the same
//! large buffers (activations, im2col columns, gradients) every step. glibc's malloc maps
//! blocks above its mmap threshold (at most 32 MiB by default) fresh from the kernel each
//! time and unmaps them when freed, so every such buffer costs a page fault and a cleared page
//! per 4 KiB on each use: a fifth of a U-Net training step on CPU, profiled. [`tune_allocator`]
//! has malloc serve those blocks from its heap and keep freed memory for the next step instead.

/// Blocks at least this large are still mapped directly (and returned when freed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 1 << 30;
/// Free memory kept at the top of the heap before malloc gives it back to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = i32::MAX;
/// Extra memory requested each time the heap grows, so it grows in few steps.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TOP_PAD: i32 = 64 << 20;

/// Tells glibc's malloc to keep the memory of freed tensors for reuse rather than return it
/// to the kernel (see the module's documentation). Programs call it once at start, before
/// any tensor work: the `kiln` binary and the benches do. Memory freed stays counted in the
/// process's footprint. Returns whether the settings took; elsewhere than glibc on Linux it
/// does nothing and returns false.
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                && libc::mallopt(libc::M_TOP_PAD, TOP_PAD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
