//! Session-ticket keys shared by every event loop and worker process of one
//! proxy, so a client resumes whichever loop or process its next connection
//! lands on (SO_REUSEPORT spreads them).
//!
//! The keys live in the board (shared memory with worker processes): two
//! slots, for this hour and the last. The first loop of any process that
//! needs the new hour's key writes a random one into the slot of the hour
//! before last, erasing it; a ticket is accepted in the hour it was issued
//! and the next, and never after (forward secrecy as the key rotates). An
//! upgraded binary starts a new board, so tickets do not survive an
//! upgrade: those clients make one full handshake.
//!
//! A ticket: the hour it was sealed in (8 bytes, authenticated), the
//! AES-256-GCM nonce (12), the sealed session state and its tag (16).

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use rustls::server::ProducesTickets;

/// How long one key seals tickets; each is accepted for one more period.
pub const ROTATE_SECS: u64 = 3600;
/// `period + 1` marks a filled slot; 0 is empty, this is mid-write.
const WRITING: u64 = u64::MAX;
const TAG_LEN: usize = 16;
const HEADER: usize = 8 + NONCE_LEN;

#[repr(C)]
#[derive(Default)]
struct KeySlot {
    period: AtomicU64,
    key: [AtomicU64; 4],
}

/// The two key slots, in the board. All zero is a valid (empty) value.
#[repr(C)]
#[derive(Default)]
pub struct TicketKeys {
    slots: [KeySlot; 2],
}

impl TicketKeys {
    /// The key of `period`, if its slot holds it (a seqlock read: the key
    /// counts only if the slot did not change while it was read).
    fn read(&self, period: u64) -> Option<[u8; 32]> {
        let slot = &self.slots[(period % 2) as usize];
        let mark = slot.period.load(Ordering::Acquire);
        if mark != period + 1 {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, word) in slot.key.iter().enumerate() {
            key[i * 8..i * 8 + 8].copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        fence(Ordering::Acquire);
        (slot.period.load(Ordering::Relaxed) == mark).then_some(key)
    }

    /// The key of `period`, writing a fresh one into its slot if it is the
    /// first to be asked; None while another loop writes it.
    fn current(&self, period: u64) -> Option<[u8; 32]> {
        if let Some(key) = self.read(period) {
            return Some(key);
        }
        let slot = &self.slots[(period % 2) as usize];
        let mark = slot.period.load(Ordering::Acquire);
        if mark == WRITING || mark > period {
            return None;
        }
        slot.period
            .compare_exchange(mark, WRITING, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        let mut key = [0u8; 32];
        if aws_lc_rs::rand::fill(&mut key).is_err() {
            slot.period.store(0, Ordering::Release);
            return None;
        }
        for (i, word) in slot.key.iter().enumerate() {
            let bytes: [u8; 8] = key[i * 8..i * 8 + 8].try_into().expect("8 bytes");
            word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
        }
        slot.period.store(period + 1, Ordering::Release);
        Some(key)
    }
}

static KEYS: OnceLock<&'static TicketKeys> = OnceLock::new();

/// Points this process's ticketer at the board's keys; called once at
/// start, before any handshake. Until then no ticket is issued.
pub fn attach(keys: &'static TicketKeys) {
    let _ = KEYS.set(keys);
}

fn now_period() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        / ROTATE_SECS
}

/// rustls' ticket producer over the shared keys.
#[derive(Debug)]
pub struct SharedTicketer;

impl SharedTicketer {
    pub fn shared() -> Arc<dyn ProducesTickets> {
        Arc::new(SharedTicketer)
    }
}

fn sealing_key(key: &[u8; 32]) -> Option<RandomizedNonceKey> {
    RandomizedNonceKey::new(&AES_256_GCM, key).ok()
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        ROTATE_SECS as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let period = now_period();
        let key = sealing_key(&KEYS.get()?.current(period)?)?;
        let stamp = period.to_be_bytes();
        let mut sealed = plain.to_vec();
        sealed.reserve(TAG_LEN);
        let nonce = key
            .seal_in_place_append_tag(Aad::from(stamp), &mut sealed)
            .ok()?;
        let mut ticket = Vec::with_capacity(HEADER + sealed.len());
        ticket.extend_from_slice(&stamp);
        ticket.extend_from_slice(nonce.as_ref());
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < HEADER + TAG_LEN {
            return None;
        }
        let period = u64::from_be_bytes(ticket[..8].try_into().ok()?);
        let now = now_period();
        if period != now && period + 1 != now {
            return None; // its key is gone (or it claims to be from the future)
        }
        let key = sealing_key(&KEYS.get()?.read(period)?)?;
        let nonce = Nonce::try_assume_unique_for_key(&ticket[8..HEADER]).ok()?;
        let mut sealed = ticket[HEADER..].to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(period.to_be_bytes()), &mut sealed)
            .ok()?;
        let len = plain.len();
        sealed.truncate(len);
        Some(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> &'static TicketKeys {
        Box::leak(Box::default())
    }

    #[test]
    fn a_slot_holds_its_period_and_the_next_one_erases_the_one_before() {
        let k = keys();
        assert_eq!(k.read(10), None);
        let a = k.current(10).expect("written");
        assert_eq!(k.read(10), Some(a));
        assert_eq!(k.current(10), Some(a), "the same key again");
        let b = k.current(11).expect("written");
        assert_ne!(a, b);
        assert_eq!(k.read(10), Some(a), "the previous period still reads");
        let c = k.current(12).expect("written");
        assert_eq!(k.read(10), None, "erased by period 12");
        assert_ne!(c, a);
    }

    #[test]
    fn tickets_open_with_the_key_that_sealed_them_and_reject_tampering() {
        attach(keys());
        let t = SharedTicketer;
        let ticket = t.encrypt(b"session state").expect("sealed");
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        for i in [0, 9, HEADER, ticket.len() - 1] {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(t.decrypt(&bad), None, "byte {i} flipped");
        }
        assert_eq!(t.decrypt(&ticket[..HEADER + 3]), None);
        assert_eq!(t.decrypt(b""), None);
    }
}
