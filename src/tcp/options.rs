//! Option negotiation on the handshake: MSS (RFC 9293 3.7.1, RFC 6691), window
//! scale and timestamps (RFC 7323), SACK-permitted (RFC 2018).
//!
//! Parsing the bytes is `wire`'s job; this decides what we offer and what the
//! two offers together mean for the connection.

use super::config::Config;
use crate::wire::{TcpOptions, Timestamps};

/// RFC 9293 3.7.1: the MSS to assume when the peer sends none.
pub(crate) const DEFAULT_MSS: u16 = 536;
/// Smallest peer MSS we accept (as Linux's TCP_MIN_MSS): a tiny MSS is a resource attack.
pub(crate) const MIN_MSS: u16 = 88;
/// RFC 7323 2.3: the largest shift; larger offers are treated as 14.
pub(crate) const MAX_WSCALE: u8 = 14;
/// Bytes the timestamps option takes in every segment (10 + 2 NOPs), RFC 6691.
pub(crate) const TS_OPTION_LEN: u16 = 12;

/// What the handshake settled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Negotiated {
    /// Largest payload we put in a segment (peer's MSS, our cap, minus TS option).
    pub(crate) snd_mss: u16,
    /// Shift applied to windows the peer sends us.
    pub(crate) snd_wscale: u8,
    /// Shift applied to windows we send.
    pub(crate) rcv_wscale: u8,
    pub(crate) timestamps: bool,
    pub(crate) sack: bool,
}

/// The options of a SYN we send (active open).
pub(crate) fn syn_options(cfg: &Config, tsval: u32) -> TcpOptions {
    TcpOptions {
        sack: crate::wire::SackBlocks::EMPTY,
        mss: Some(cfg.mss),
        window_scale: Some(cfg.effective_window_scale()),
        sack_permitted: cfg.sack_permitted,
        timestamps: cfg.timestamps.then_some(Timestamps { tsval, tsecr: 0 }),
    }
}

/// The outcome of `ours` (what we sent or will send in our SYN/SYN+ACK) and
/// `peer` (the options of the peer's SYN or SYN+ACK).
pub(crate) fn negotiate(cfg: &Config, peer: &TcpOptions) -> Negotiated {
    let ws = cfg.effective_window_scale();
    let (snd_wscale, rcv_wscale) = match peer.window_scale {
        // RFC 7323 2.2: scaling is on only when both sides sent the option.
        Some(shift) => (shift.min(MAX_WSCALE), ws),
        None => (0, 0),
    };
    let timestamps = cfg.timestamps && peer.timestamps.is_some();
    let peer_mss = peer.mss.unwrap_or(DEFAULT_MSS).max(MIN_MSS);
    let mut snd_mss = peer_mss.min(cfg.mss.max(MIN_MSS));
    if timestamps {
        snd_mss -= TS_OPTION_LEN;
    }
    Negotiated {
        snd_mss,
        snd_wscale,
        rcv_wscale,
        timestamps,
        sack: cfg.sack_permitted && peer.sack_permitted,
    }
}

/// The options of our SYN+ACK answering a SYN that gave `neg`: window scale only
/// if the SYN had it (RFC 7323 2.2), timestamps and SACK only if agreed.
/// `peer_window_scale`: the SYN carried the option; `tsecr`: the SYN's TSval.
pub(crate) fn synack_options(
    cfg: &Config,
    neg: &Negotiated,
    peer_window_scale: bool,
    tsval: u32,
    tsecr: u32,
) -> TcpOptions {
    TcpOptions {
        sack: crate::wire::SackBlocks::EMPTY,
        mss: Some(cfg.mss),
        window_scale: peer_window_scale.then_some(neg.rcv_wscale),
        sack_permitted: neg.sack,
        timestamps: neg.timestamps.then_some(Timestamps { tsval, tsecr }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn linux_syn() -> TcpOptions {
        TcpOptions {
            sack: crate::wire::SackBlocks::EMPTY,
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamps: Some(Timestamps {
                tsval: 100,
                tsecr: 0,
            }),
        }
    }

    #[test]
    fn against_linux_syn() {
        let cfg = Config::default();
        let neg = negotiate(&cfg, &linux_syn());
        assert_eq!(
            neg,
            Negotiated {
                snd_mss: 1448,
                snd_wscale: 7,
                rcv_wscale: 7,
                timestamps: true,
                sack: true
            }
        );
        let o = synack_options(&cfg, &neg, true, 55, 100);
        assert_eq!(o.mss, Some(1460));
        assert_eq!(o.window_scale, Some(7));
        assert!(o.sack_permitted, "SACK-permitted answered when offered");
        assert_eq!(
            o.timestamps,
            Some(Timestamps {
                tsval: 55,
                tsecr: 100
            })
        );
    }

    #[test]
    fn bare_syn_means_no_options() {
        let cfg = Config::default();
        let neg = negotiate(&cfg, &TcpOptions::default());
        assert_eq!(neg.snd_mss, DEFAULT_MSS);
        assert_eq!((neg.snd_wscale, neg.rcv_wscale), (0, 0));
        assert!(!neg.timestamps && !neg.sack);
        let o = synack_options(&cfg, &neg, false, 1, 0);
        assert_eq!(o.window_scale, None);
        assert_eq!(o.timestamps, None);
    }

    fn arb_config() -> impl Strategy<Value = Config> {
        (
            200u16..9000,
            0u8..16,
            any::<bool>(),
            any::<bool>(),
            1usize..(1 << 24),
        )
            .prop_map(|(mss, ws, ts, sack, rbuf)| Config {
                mss,
                window_scale: ws,
                timestamps: ts,
                sack_permitted: sack,
                recv_buffer: rbuf,
                ..Config::default()
            })
    }

    fn arb_options() -> impl Strategy<Value = TcpOptions> {
        (
            proptest::option::of(any::<u16>()),
            proptest::option::of(any::<u8>()),
            any::<bool>(),
            proptest::option::of((any::<u32>(), any::<u32>())),
        )
            .prop_map(|(mss, ws, sack, ts)| TcpOptions {
                sack: crate::wire::SackBlocks::EMPTY,
                mss,
                window_scale: ws,
                sack_permitted: sack,
                timestamps: ts.map(|(tsval, tsecr)| Timestamps { tsval, tsecr }),
            })
    }

    proptest! {
        /// Two engines that handshake agree: each side's send shift is the other's
        /// receive shift, both agree on TS and SACK, and MSS/shift stay in bounds.
        #[test]
        fn both_sides_agree(a in arb_config(), b in arb_config()) {
            let syn = syn_options(&a, 1);
            let b_neg = negotiate(&b, &syn);
            let synack = synack_options(&b, &b_neg, syn.window_scale.is_some(), 2, 1);
            let a_neg = negotiate(&a, &synack);
            prop_assert_eq!(a_neg.snd_wscale, b_neg.rcv_wscale);
            prop_assert_eq!(a_neg.rcv_wscale, b_neg.snd_wscale);
            prop_assert_eq!(a_neg.timestamps, b_neg.timestamps);
            prop_assert_eq!(a_neg.sack, b_neg.sack);
            // The advertised buffer fits the 16-bit field once scaled.
            let ews = a.effective_window_scale();
            prop_assert!((a.recv_buffer >> ews) <= 0xffff || ews == MAX_WSCALE);
            prop_assert!(a_neg.snd_mss <= b.mss.max(MIN_MSS));
            prop_assert!(b_neg.snd_mss <= a.mss.max(MIN_MSS));
        }

        /// Whatever a peer sends, the result is within bounds and never panics.
        #[test]
        fn hostile_options_are_bounded(cfg in arb_config(), peer in arb_options()) {
            let neg = negotiate(&cfg, &peer);
            prop_assert!(neg.snd_wscale <= MAX_WSCALE && neg.rcv_wscale <= MAX_WSCALE);
            prop_assert!(neg.snd_mss >= MIN_MSS - TS_OPTION_LEN);
            prop_assert!(neg.snd_mss <= cfg.mss.max(MIN_MSS));
            prop_assert_eq!(neg.timestamps, cfg.timestamps && peer.timestamps.is_some());
            let tsecr = peer.timestamps.map_or(0, |t| t.tsval);
            let o = synack_options(&cfg, &neg, peer.window_scale.is_some(), 9, tsecr);
            prop_assert_eq!(o.window_scale.is_some(), peer.window_scale.is_some());
            prop_assert_eq!(o.timestamps.map(|t| t.tsecr), neg.timestamps.then_some(tsecr));
        }
    }
}
