//! The connection table's storage: fixed-size pages of slots.
//!
//! A `Vec` of slots doubles as connections arrive, copying the table and
//! freeing the old copy each time; the allocator keeps much of what was freed
//! resident (measured: 8,000 idle connections held 4.8 MB live but added
//! 16.5 MB of RSS). Pages never move and are never freed, so the table costs
//! what it holds, plus at most one partly used page.

use std::ops::{Index, IndexMut};

/// Slots per page (a page of ~540-byte slots is ~135 KiB).
const PAGE: usize = 256;

pub(super) struct Slots<T> {
    pages: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            pages: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slots<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn push(&mut self, value: T) {
        if self.len.is_multiple_of(PAGE) {
            self.pages.push(Vec::with_capacity(PAGE));
        }
        self.pages[self.len / PAGE].push(value);
        self.len += 1;
    }

    pub(super) fn get(&self, i: usize) -> Option<&T> {
        self.pages.get(i / PAGE)?.get(i % PAGE)
    }

    pub(super) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.pages.get_mut(i / PAGE)?.get_mut(i % PAGE)
    }
}

impl<T> Index<usize> for Slots<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.pages[i / PAGE][i % PAGE]
    }
}

impl<T> IndexMut<usize> for Slots<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.pages[i / PAGE][i % PAGE]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_across_pages() {
        let mut s = Slots::default();
        for i in 0..(3 * PAGE + 5) {
            s.push(i);
        }
        assert_eq!(s.len(), 3 * PAGE + 5);
        for i in 0..s.len() {
            assert_eq!(s[i], i);
        }
        s[PAGE] = 7;
        assert_eq!(s.get(PAGE), Some(&7));
        assert_eq!(s.get(s.len()), None);
        assert_eq!(s.pages.iter().map(Vec::capacity).sum::<usize>(), 4 * PAGE);
    }
}
