//! Giving memory the allocator holds but no longer uses back to the system. glibc's malloc
//! keeps freed blocks (a large message's buffers, once given back) in its arenas;
//! `malloc_trim` releases their pages. The `holdfast` binary allocates with jemalloc, which
//! returns freed pages on its own (`.cargo/config.toml`); this covers the library on glibc's
//! malloc (tests, embedders), and costs the binary one call that finds nothing to do.
//!
//! Outside `ring`, this is the crate's one unsafe call (a foreign function), kept alone here.
#![allow(unsafe_code)]

/// See the module documentation. Walks the allocator's arenas: call it off the async threads.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only touches the allocator's own free lists,
    // under its own locks; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
