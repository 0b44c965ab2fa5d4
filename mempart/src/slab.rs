//! A generational slab: stable small keys, O(1) lookup, stale keys detected.

use serde::{Deserialize, Serialize};

/// A slot index plus the generation it was handed out in, packed in one word (index
/// high, so keys order by index, then generation) so that a key and anything of one more
/// word travel in registers.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "KeyParts", into = "KeyParts")]
pub struct Key(u64);

/// How a [`Key`] is written: its two halves by name.
#[derive(Serialize, Deserialize)]
struct KeyParts {
    index: u32,
    generation: u32,
}

impl From<KeyParts> for Key {
    fn from(parts: KeyParts) -> Key {
        Key::new(parts.index, parts.generation)
    }
}

impl From<Key> for KeyParts {
    fn from(key: Key) -> KeyParts {
        KeyParts {
            index: key.index(),
            generation: key.generation(),
        }
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("index", &self.index())
            .field("generation", &self.generation())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

impl Key {
    /// A key no slab hands out (its index is beyond any slab's length): marks a place
    /// that holds nothing.
    pub(crate) const VACANT: Key = Key(u64::MAX);

    /// The key of slot `index` in its `generation`.
    pub(crate) fn new(index: u32, generation: u32) -> Key {
        Key((u64::from(index) << 32) | u64::from(generation))
    }

    /// The slot index: dense, reused after a removal.
    pub fn index(self) -> u32 {
        (self.0 >> 32) as u32
    }

    fn generation(self) -> u32 {
        self.0 as u32
    }
}

/// Values addressed by [`Key`]; a removed value's key never finds a later value.
#[derive(Debug, Clone, PartialEq)]
pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Number of live values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Stores `value` and returns its key.
    pub fn insert(&mut self, value: T) -> Key {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            if let Some(slot) = self.slots.get_mut(index as usize) {
                slot.generation = slot.generation.wrapping_add(1);
                slot.value = Some(value);
                return Key::new(index, slot.generation);
            }
        }
        // Slot counts stay far below u32::MAX: callers bound how many values live at once.
        let index = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.slots.push(Slot {
            generation: 0,
            value: Some(value),
        });
        Key::new(index, 0)
    }

    /// The value under `key`, if it is still there.
    pub fn get(&self, key: Key) -> Option<&T> {
        self.slots
            .get(key.index() as usize)
            .filter(|s| s.generation == key.generation())
            .and_then(|s| s.value.as_ref())
    }

    /// The value under `key`, mutably.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        self.slots
            .get_mut(key.index() as usize)
            .filter(|s| s.generation == key.generation())
            .and_then(|s| s.value.as_mut())
    }

    /// The key of the live value in slot `index`.
    pub fn key_at(&self, index: u32) -> Option<Key> {
        let slot = self.slots.get(index as usize)?;
        slot.value
            .as_ref()
            .map(|_| Key::new(index, slot.generation))
    }

    /// Takes the value out; its key goes stale.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        let slot = self
            .slots
            .get_mut(key.index() as usize)
            .filter(|s| s.generation == key.generation())?;
        let value = slot.value.take()?;
        self.free.push(key.index());
        self.len -= 1;
        Some(value)
    }

    /// Every live value with its key, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let value = s.value.as_ref()?;
            let index = u32::try_from(i).ok()?;
            Some((Key::new(index, s.generation), value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_written_as_its_two_halves_and_read_back() {
        let key = Key::new(3, 7);
        let text = toml::to_string(&key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text, "index = 3\ngeneration = 7\n");
        assert_eq!(toml::from_str::<Key>(&text).ok(), Some(key));
        assert!(Key::new(1, 9) < Key::new(2, 0), "keys order by index first");
        assert_eq!(
            format!("{key:?}"),
            "Key { index: 3, generation: 7 }",
            "debug output names both halves"
        );
    }

    #[test]
    fn stale_key_does_not_find_reused_slot() {
        let mut s = Slab::default();
        let a = s.insert("a");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_eq!(s.get(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.len(), 1);
        assert_eq!(s.iter().count(), 1);
    }
}
