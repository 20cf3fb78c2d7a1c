//! The allocator, chosen per process. A control-plane makes and drops many small, short-lived
//! objects per message (decoded messages, envelopes, JSON text, each round's columns), where
//! mimalloc is markedly faster than glibc's malloc; a gateway is sized by the memory its idle
//! connections hold, which glibc's malloc keeps lower once a large first message has come and
//! gone. One binary runs either role, so the choice is made at the process's first allocation,
//! before anything can have been allocated by the other: from `AMPORA_ALLOCATOR` (`system` or
//! `mimalloc`) if set, otherwise from the role its command line names (`control-plane`:
//! mimalloc; `gateway` and `serve`: system).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    System,
    Mimalloc,
}

impl Allocator {
    pub fn name(self) -> &'static str {
        match self {
            Allocator::System => "system",
            Allocator::Mimalloc => "mimalloc",
        }
    }

    fn named(name: &[u8]) -> Option<Allocator> {
        match name {
            b"system" => Some(Allocator::System),
            b"mimalloc" => Some(Allocator::Mimalloc),
            _ => None,
        }
    }

    /// From the `AMPORA_ALLOCATOR` value, if any, and the process's command line (its
    /// arguments, each followed by a NUL, as `/proc/self/cmdline` has them).
    fn choose(variable: Option<&[u8]>, command_line: &[u8]) -> Allocator {
        if let Some(named) = variable.and_then(Allocator::named) {
            return named;
        }
        let role = command_line
            .split(|byte| *byte == 0)
            .skip(1)
            .find(|argument| !argument.starts_with(b"-"));
        if role == Some(b"control-plane") {
            Allocator::Mimalloc
        } else {
            Allocator::System
        }
    }
}

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;

static CHOSEN: AtomicU8 = AtomicU8::new(UNDECIDED);

/// The allocator this process runs on.
pub fn current() -> Allocator {
    match CHOSEN.load(Ordering::Relaxed) {
        UNDECIDED => decide(),
        MIMALLOC => Allocator::Mimalloc,
        _ => Allocator::System,
    }
}

/// Checks, once the configuration file has been read into the environment, that
/// `AMPORA_ALLOCATOR` names an allocator and is the one the process runs on (it is read at the
/// first allocation, so only from the real environment).
pub fn check_variable() -> Result<(), String> {
    let Some(value) = std::env::var_os("AMPORA_ALLOCATOR") else {
        return Ok(());
    };
    match Allocator::named(value.as_encoded_bytes()) {
        None => Err(format!(
            "AMPORA_ALLOCATOR={value:?}: expected \"system\" or \"mimalloc\""
        )),
        Some(named) if named != current() => Err(format!(
            "AMPORA_ALLOCATOR={}: the allocator is chosen before the AMPORA_CONFIG file is read; set it in the environment",
            named.name()
        )),
        Some(_) => Ok(()),
    }
}

/// Reads the variable and the command line without allocating (this runs inside the first
/// allocation). Threads racing here read the same inputs and store the same answer.
#[cold]
fn decide() -> Allocator {
    // SAFETY: getenv with a NUL-terminated name; the result is read at once, before anything
    // could change the environment (no other thread exists before the first allocation).
    let variable = unsafe {
        let value = libc::getenv(c"AMPORA_ALLOCATOR".as_ptr());
        (!value.is_null()).then(|| std::ffi::CStr::from_ptr(value).to_bytes())
    };
    let mut command_line = [0u8; 4096];
    let length = read_command_line(&mut command_line);
    let chosen = Allocator::choose(variable, &command_line[..length]);
    let code = match chosen {
        Allocator::System => SYSTEM,
        Allocator::Mimalloc => MIMALLOC,
    };
    CHOSEN.store(code, Ordering::Relaxed);
    chosen
}

/// Fills `buffer` from `/proc/self/cmdline`; returns how many bytes it holds (0 when it cannot
/// be read: the process then runs on the system allocator unless told otherwise).
fn read_command_line(buffer: &mut [u8]) -> usize {
    // SAFETY: plain system calls on a stack buffer of the length given; the descriptor is ours
    // and closed before returning.
    unsafe {
        let fd = libc::open(
            c"/proc/self/cmdline".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return 0;
        }
        let mut filled = 0;
        while filled < buffer.len() {
            let read = libc::read(
                fd,
                buffer[filled..].as_mut_ptr().cast(),
                buffer.len() - filled,
            );
            if read <= 0 {
                break;
            }
            filled += read as usize;
        }
        libc::close(fd);
        filled
    }
}

/// Forwards every call to the allocator [`current`] names.
pub struct PerProcess;

// SAFETY: each call goes to one allocator, the same for the whole life of the process, so
// every block is freed or resized by the allocator that made it.
unsafe impl GlobalAlloc for PerProcess {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match current() {
            Allocator::Mimalloc => MiMalloc.alloc(layout),
            Allocator::System => System.alloc(layout),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match current() {
            Allocator::Mimalloc => MiMalloc.alloc_zeroed(layout),
            Allocator::System => System.alloc_zeroed(layout),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match current() {
            Allocator::Mimalloc => MiMalloc.dealloc(ptr, layout),
            Allocator::System => System.dealloc(ptr, layout),
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match current() {
            Allocator::Mimalloc => MiMalloc.realloc(ptr, layout, new_size),
            Allocator::System => System.realloc(ptr, layout, new_size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Allocator;

    #[test]
    fn the_control_plane_role_runs_on_mimalloc_and_the_others_on_the_system_allocator() {
        let choose = |line: &[u8]| Allocator::choose(None, line);
        assert_eq!(
            choose(b"/usr/bin/ampora\0control-plane\0--nats-url\0nats://x\0"),
            Allocator::Mimalloc
        );
        assert_eq!(
            choose(b"ampora\0gateway\0--bus-subject-prefix\0control-plane\0"),
            Allocator::System
        );
        assert_eq!(choose(b"ampora\0serve\0"), Allocator::System);
        assert_eq!(choose(b"ampora\0--help\0"), Allocator::System);
        assert_eq!(choose(b""), Allocator::System);
        // A program named like the role is still only the program.
        assert_eq!(choose(b"control-plane\0gateway\0"), Allocator::System);
    }

    #[test]
    fn the_variable_overrides_the_role_and_other_values_leave_it_to_the_role() {
        let line = b"ampora\0control-plane\0";
        assert_eq!(Allocator::choose(Some(b"system"), line), Allocator::System);
        assert_eq!(
            Allocator::choose(Some(b"mimalloc"), b"ampora\0gateway\0"),
            Allocator::Mimalloc
        );
        assert_eq!(
            Allocator::choose(Some(b"jemalloc"), line),
            Allocator::Mimalloc
        );
    }
}
