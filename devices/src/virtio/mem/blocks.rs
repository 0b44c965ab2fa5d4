//! Which blocks of a memory device are plugged, and the VMM's backing of each.

/// What the VMM does when a block is plugged or unplugged: map it for the guest, or take
/// it away and free its host memory.
pub trait BlockBacking: Send {
    /// Makes block `index` accessible to the guest.
    fn plug(&mut self, index: u64) -> Result<(), String>;
    /// Makes block `index` inaccessible and frees its host pages.
    fn unplug(&mut self, index: u64) -> Result<(), String>;
}

/// One bit per block: set while plugged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plugged {
    words: Vec<u64>,
    blocks: u64,
    count: u64,
}

impl Plugged {
    /// `blocks` blocks, none plugged.
    pub fn new(blocks: u64) -> Plugged {
        let words = usize::try_from(blocks.div_ceil(64)).unwrap_or(0);
        Plugged {
            words: vec![0; words],
            blocks,
            count: 0,
        }
    }

    /// How many blocks there are.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// How many are plugged.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether block `index` is plugged (out of range: no).
    pub fn is_plugged(&self, index: u64) -> bool {
        self.word(index)
            .is_some_and(|(w, bit)| self.words.get(w).is_some_and(|v| v & bit != 0))
    }

    /// Marks block `index` plugged or not; out of range does nothing.
    pub fn set(&mut self, index: u64, plugged: bool) {
        let Some((w, bit)) = self.word(index) else {
            return;
        };
        let Some(word) = self.words.get_mut(w) else {
            return;
        };
        let was = *word & bit != 0;
        if plugged && !was {
            *word |= bit;
            self.count += 1;
        } else if !plugged && was {
            *word &= !bit;
            self.count -= 1;
        }
    }

    /// How many of `[first, first + n)` are plugged.
    pub fn count_in(&self, first: u64, n: u64) -> u64 {
        (first..first.saturating_add(n))
            .filter(|&i| self.is_plugged(i))
            .count() as u64
    }

    /// The plugged blocks, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.blocks).filter(|&i| self.is_plugged(i))
    }

    fn word(&self, index: u64) -> Option<(usize, u64)> {
        (index < self.blocks).then(|| ((index / 64) as usize, 1u64 << (index % 64)))
    }
}
