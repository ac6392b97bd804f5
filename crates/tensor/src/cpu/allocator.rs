//! The C allocator's settings for tensor work. A training step allocates and frees the same
//! large buffers (activations, im2col columns, gradients) every step. glibc's malloc maps
//! blocks above its mmap threshold (at most 32 MiB by default) fresh from the kernel each
//! time and unmaps them when freed, so every such buffer costs a page fault and a cleared page
//! per 4 KiB on each use: a fifth of a U-Net training step on CPU, profiled. [`tune_allocator`]
//! has malloc serve those blocks from its heap and keep freed memory for the next step instead.
//! [`MemoryGuard`] turns a block larger than the machine's available memory into a one-line
//! error.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// A global allocator that refuses a block larger than the memory the machine has available,
/// with one line on stderr and exit status 1, instead of letting the kernel's overcommit hand
/// it out and the OOM killer (or swap) end the process later. Blocks of
/// [`MemoryGuard::CHECKED_FROM`] bytes and more are checked, against the smaller of
/// `/proc/meminfo`'s MemAvailable and the cgroup's `memory.max` less `memory.current` (a
/// container's limit, which /proc/meminfo does not show); smaller blocks, and blocks on
/// machines where neither is readable, go straight to the system allocator. A program opts
/// in with `#[global_allocator] static ALLOCATOR: MemoryGuard = MemoryGuard;` (the `kiln`
/// binary does). A block is only refused when it cannot fit by itself: many blocks that fit
/// one by one can still exhaust memory together.
pub struct MemoryGuard;

/// With a value set by [`MemoryGuard::pretend_available`], the bytes available (tests only).
static PRETEND_AVAILABLE: AtomicU64 = AtomicU64::new(u64::MAX);

impl MemoryGuard {
    /// The smallest block checked: below it, the check's reading of two small files would
    /// cost more than it could save.
    pub const CHECKED_FROM: usize = 64 << 20;

    /// Makes the guard take `bytes` as the memory available, for tests of what a machine with
    /// that much does (the `kiln` binary sets it from `KILN_FAULT_INJECTION_MEMORY_AVAILABLE`).
    pub fn pretend_available(bytes: u64) {
        PRETEND_AVAILABLE.store(bytes, Ordering::Relaxed);
    }

    /// The bytes a new block can have, if the machine says: see the type's documentation.
    /// Reads the files into stack buffers, as an allocator must not allocate.
    pub fn available() -> Option<u64> {
        let pretend = PRETEND_AVAILABLE.load(Ordering::Relaxed);
        if pretend != u64::MAX {
            return Some(pretend);
        }
        let mut buffer = [0u8; 4096];
        let meminfo = read_small(c"/proc/meminfo", &mut buffer)
            .and_then(|text| field_kib(text, b"MemAvailable:"))
            .map(|kib| kib.saturating_mul(1024));
        let cgroup = (|| {
            let mut max = [0u8; 64];
            let max = parse_u64(read_small(c"/sys/fs/cgroup/memory.max", &mut max)?)?;
            let mut current = [0u8; 64];
            let current = parse_u64(read_small(c"/sys/fs/cgroup/memory.current", &mut current)?)?;
            Some(max.saturating_sub(current))
        })();
        match (meminfo, cgroup) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

// SAFETY: every call goes to `System` with the same arguments; the guard only looks at the
// size first, and ends the process instead of returning a block it refuses.
unsafe impl GlobalAlloc for MemoryGuard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        refuse_if_unavailable(layout.size());
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        refuse_if_unavailable(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The growth: what a block grown in place takes (one that moves takes new_size,
        // briefly, while the old is copied).
        if new_size > layout.size() {
            refuse_if_unavailable(new_size - layout.size());
        }
        // SAFETY: as for `dealloc`, and `new_size` is the caller's, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Ends the process with one line if a block of `size` bytes cannot fit in the memory
/// available.
fn refuse_if_unavailable(size: usize) {
    if cfg!(not(unix)) || size < MemoryGuard::CHECKED_FROM {
        return;
    }
    let Some(available) = MemoryGuard::available() else {
        return;
    };
    if (size as u64) <= available {
        return;
    }
    let mut line = StackLine::default();
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    let _ = writeln!(
        line,
        "error: out of memory: kiln needs a block of {:.1} GiB and the machine has {:.1} GiB \
         available; a smaller batch (--batch-size), model (--channels, --latent-dim) or \
         number of images (--n) needs less",
        gib(size as u64),
        gib(available),
    );
    // SAFETY: writing a stack buffer to stderr and ending the process, neither of which
    // allocates (the ordinary exit runs destructors and flushes, which could).
    #[cfg(unix)]
    unsafe {
        libc::write(2, line.bytes.as_ptr().cast(), line.len);
        libc::_exit(1);
    }
}

/// A line formatted without allocating (what does not fit is cut).
struct StackLine {
    bytes: [u8; 512],
    len: usize,
}

impl Default for StackLine {
    fn default() -> Self {
        StackLine {
            bytes: [0; 512],
            len: 0,
        }
    }
}

impl std::fmt::Write for StackLine {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let room = self.bytes.len() - self.len;
        let take = text.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&text.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// The start of a small file, read into `buffer` without allocating.
#[cfg(not(unix))]
fn read_small<'a>(_path: &std::ffi::CStr, _buffer: &'a mut [u8]) -> Option<&'a [u8]> {
    None
}

/// The start of a small file, read into `buffer` without allocating.
#[cfg(unix)]
fn read_small<'a>(path: &std::ffi::CStr, buffer: &'a mut [u8]) -> Option<&'a [u8]> {
    // SAFETY: a C string path; the descriptor is closed before returning; `read` writes at
    // most `buffer.len()` bytes into `buffer`.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len());
        libc::close(fd);
        (n > 0).then(|| &buffer[..n as usize])
    }
}

/// The number of kibibytes on `/proc/meminfo`'s line starting with `key`.
fn field_kib(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)?;
    let rest = &text[at + key.len()..];
    let line = &rest[..rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len())];
    let value = line.strip_suffix(b" kB").unwrap_or(line);
    parse_u64(value)
}

/// A decimal number with blanks around it; `None` for anything else (cgroup's "max" too).
fn parse_u64(text: &[u8]) -> Option<u64> {
    let text = text.trim_ascii();
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_cgroup_numbers_parse() {
        let meminfo =
            b"MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20971520 kB\n";
        assert_eq!(field_kib(meminfo, b"MemAvailable:"), Some(20_971_520));
        assert_eq!(field_kib(meminfo, b"MemFree:"), Some(100));
        assert_eq!(field_kib(meminfo, b"SwapFree:"), None);
        assert_eq!(parse_u64(b"8589934592\n"), Some(8_589_934_592));
        assert_eq!(parse_u64(b"max\n"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
        assert_eq!(parse_u64(b""), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn linux_says_how_much_is_available() {
        let available = MemoryGuard::available().unwrap();
        assert!(available > 1 << 20, "{available}");
    }
}
