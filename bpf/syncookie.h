// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// SYN cookies answered in XDP while a SYN flood lasts.
//
// The engine (src/tcp/syn_cookies.rs, src/tcp/isn.rs) validates the ACK that
// completes the handshake, so everything here must give bit for bit the
// cookie and TSval the engine would have sent itself:
//   ISN   = count(5) | mss index(3) | MAC(24),  count = engine_us / 64 s,
//   MAC   = SipHash-1-3(key, [4, tuple(12), peer_isn << 32 | count (LE)]),
//   TSval = (ms + ts_offset) with its low 5 bits = wscale(4) | sack(1),
//           ts_offset = SipHash-1-3(key, [2, tuple(12), 0]).
// The unit tests in src/xdp/tests.rs run this program on crafted SYNs
// (BPF_PROG_TEST_RUN) and complete the handshake against the engine.

#ifndef TURNSTILE_SYNCOOKIE_H
#define TURNSTILE_SYNCOOKIE_H

#define DOMAIN_TS 2
#define DOMAIN_COOKIE 4
#define COOKIE_PERIOD_US (64ULL * 1000 * 1000)
#define WS_NONE 0xf

/* Shared with user space through mmap (BPF_F_MMAPABLE): the shards write
 * flood_until_ns and read sent without a system call. Layout mirrored by
 * src/xdp/flood.rs. */
struct cookie_state {
	__u64 k0, k1;	      /* SipHash key: the endpoint secret, LE halves */
	__u64 epoch_us;	      /* engine clock minus CLOCK_MONOTONIC (= bpf_ktime) */
	__u64 flood_until_ns; /* answer SYNs here while bpf_ktime_get_ns() < this */
	__u64 window_start_ns; /* the current one-second window of answered SYNs */
	__u64 window_syns;
	__u64 sent;	      /* cookies sent from here, for the shards */
	__u64 hold_ns;	      /* how long a busy window extends the flood */
	__u32 sustain_syns;   /* answered SYNs per second that keep it going */
	__u16 mss;	      /* what our SYN+ACK offers: the engine's config */
	__u16 window;
	__u8 wscale;
	__u8 timestamps;
	__u8 sack;
	__u8 enabled;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct cookie_state);
} cookie SEC(".maps");

/* The peer's reset of a cookie SYN+ACK. A SYN from a forged source (the
 * flood) is answered with our SYN+ACK; the real owner of that address, if
 * it has no such connection, answers it with a RST whose sequence number is
 * our acknowledgment (RFC 9293 3.10.7.1: "<SEQ=SEG.ACK><CTL=RST>"), i.e.
 * the SYN's seq + 1. One per SYN of the flood: without this each would
 * reach the AF_XDP socket (a copy, a ring slot, a shard pass) only for the
 * engine to drop it, as it drops any RST of an unknown tuple.
 *
 * A direct-mapped table per CPU, indexed by a hash of the tuple, remembers
 * what each recent cookie's RST would carry; a RST that matches one
 * exactly (tuple and sequence number) is dropped here and counted. No lock
 * and no allocation: a slot is overwritten by a later cookie, and a RST
 * whose slot was overwritten, or that comes in on another CPU, goes to the
 * engine as before. On a NIC both directions of a tuple hash to one queue
 * (RSS), so its CPU is the SYN's. Nothing the engine needs is lost: it
 * holds no state for a cookie's tuple, so such a RST is one it discards
 * (RFC 9293 3.10.7.1, CLOSED: "An incoming segment containing a RST is
 * discarded"). */
#define RST_SLOTS 16384

struct cookie_rst {
	__u32 saddr, daddr; /* of the SYN, network order */
	__u16 sport, dport; /* of the SYN, network order */
	__u32 seq;	    /* the RST's: the SYN's seq + 1, host order */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RST_SLOTS);
	__type(key, __u32);
	__type(value, struct cookie_rst);
} cookie_rsts SEC(".maps");

static __always_inline __u32 rst_slot(__u32 saddr, __u32 daddr, __u16 sport, __u16 dport)
{
	/* Not keyed: a forged collision only sends a RST to the engine. */
	__u32 h = saddr * 0x9e3779b1U ^ daddr;
	h = (h ^ ((__u32)sport << 16 | dport)) * 0x85ebca6bU;
	return (h ^ (h >> 15)) & (RST_SLOTS - 1);
}

/* Whether this RST (no ACK bit) answers one of our recent cookies. */
static __always_inline int cookie_reset(__u32 saddr, __u32 daddr, __u16 sport, __u16 dport,
					__u32 seq)
{
	__u32 slot = rst_slot(saddr, daddr, sport, dport);
	struct cookie_rst *e = bpf_map_lookup_elem(&cookie_rsts, &slot);
	if (!e || e->seq != seq || e->saddr != saddr || e->daddr != daddr ||
	    e->sport != sport || e->dport != dport)
		return 0;
	/* One RST per cookie: a second one is the engine's to judge. */
	e->saddr = 0;
	return 1;
}

static const __u16 mss_table[8] = { 216, 536, 1220, 1360, 1440, 1460, 4312, 8960 };

#define ROTL(x, b) (__u64)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                               \
	do {                                                                   \
		v0 += v1;                                                      \
		v1 = ROTL(v1, 13);                                             \
		v1 ^= v0;                                                      \
		v0 = ROTL(v0, 32);                                             \
		v2 += v3;                                                      \
		v3 = ROTL(v3, 16);                                             \
		v3 ^= v2;                                                      \
		v0 += v3;                                                      \
		v3 = ROTL(v3, 21);                                             \
		v3 ^= v0;                                                      \
		v2 += v1;                                                      \
		v1 = ROTL(v1, 17);                                             \
		v1 ^= v2;                                                      \
		v2 = ROTL(v2, 32);                                             \
	} while (0)

static __always_inline __u64 le64(const __u8 *b)
{
	return (__u64)b[0] | (__u64)b[1] << 8 | (__u64)b[2] << 16 | (__u64)b[3] << 24 |
	       (__u64)b[4] << 32 | (__u64)b[5] << 40 | (__u64)b[6] << 48 | (__u64)b[7] << 56;
}

/* SipHash-1-3 of the engine's 21-byte input: domain, tuple, extra (LE). */
static __always_inline __u64 keyed_hash(const struct cookie_state *st, __u8 domain,
					const __u8 tuple[12], __u64 extra)
{
	__u8 b[24] = {};
	b[0] = domain;
#pragma unroll
	for (int i = 0; i < 12; i++)
		b[1 + i] = tuple[i];
#pragma unroll
	for (int i = 0; i < 8; i++)
		b[13 + i] = (__u8)(extra >> (8 * i));
	__u64 v0 = st->k0 ^ 0x736f6d6570736575ULL;
	__u64 v1 = st->k1 ^ 0x646f72616e646f6dULL;
	__u64 v2 = st->k0 ^ 0x6c7967656e657261ULL;
	__u64 v3 = st->k1 ^ 0x7465646279746573ULL;
	__u64 m = le64(b);
	v3 ^= m;
	SIPROUND;
	v0 ^= m;
	m = le64(b + 8);
	v3 ^= m;
	SIPROUND;
	v0 ^= m;
	/* The last block: the 5 bytes left and the length (21) on top. */
	m = (__u64)b[16] | (__u64)b[17] << 8 | (__u64)b[18] << 16 | (__u64)b[19] << 24 |
	    (__u64)b[20] << 32 | (21ULL << 56);
	v3 ^= m;
	SIPROUND;
	v0 ^= m;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

static __always_inline __u32 fold32(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u32)sum;
}

/* The options of a SYN, as far as a cookie uses them. */
struct syn_opts {
	__u32 tsval;
	__u16 mss;
	__u8 wscale; /* WS_NONE: not offered */
	__u8 sack;
	__u8 ts;
};

/* The options, copied out of the packet, walked by bpf_loop: the verifier
 * checks the step once instead of every path through 40 bytes. */
struct opt_walk {
	__u8 buf[64]; /* the options, zero past `end` */
	__u32 pos, end;
	int bad;
	struct syn_opts o;
};

static long opt_step(__u64 index, void *arg)
{
	struct opt_walk *w = arg;
	__u32 p = w->pos;
	if (p >= w->end || p >= 40)
		return 1;
	__u8 kind = w->buf[p & 63];
	if (kind == 0) /* end of option list */
		return 1;
	if (kind == 1) { /* NOP */
		w->pos = p + 1;
		return 0;
	}
	__u8 len = w->buf[(p + 1) & 63];
	if (p + 1 >= w->end || len < 2 || p + len > w->end) {
		w->bad = 1; /* malformed: the engine judges it */
		return 1;
	}
	if (kind == 2 && len == 4) {
		w->o.mss = (__u16)w->buf[(p + 2) & 63] << 8 | w->buf[(p + 3) & 63];
	} else if (kind == 3 && len == 3) {
		__u8 ws = w->buf[(p + 2) & 63];
		w->o.wscale = ws > 14 ? 14 : ws;
	} else if (kind == 4 && len == 2) {
		w->o.sack = 1;
	} else if (kind == 8 && len == 10) {
		w->o.ts = 1;
		w->o.tsval = (__u32)w->buf[(p + 2) & 63] << 24 | (__u32)w->buf[(p + 3) & 63] << 16 |
			     (__u32)w->buf[(p + 4) & 63] << 8 | w->buf[(p + 5) & 63];
	}
	w->pos = p + len;
	return 0;
}

/* Returns 0, or -1 for anything the engine should judge itself. */
static __always_inline int parse_syn_options(struct xdp_md *ctx, __u32 off, __u32 optlen,
					     struct opt_walk *w)
{
	w->o.mss = 536; /* RFC 9293 3.7.1: the default when none is sent */
	w->o.wscale = WS_NONE;
	w->o.sack = 0;
	w->o.ts = 0;
	w->o.tsval = 0;
	w->pos = 0;
	w->end = optlen;
	w->bad = 0;
	if (optlen == 0)
		return 0;
	if (optlen > 40 || bpf_xdp_load_bytes(ctx, off, w->buf, optlen))
		return -1;
	bpf_loop(40, opt_step, w, 0);
	return w->bad ? -1 : 0;
}

/* Everything the SYN+ACK is built from, read before the frame is resized. */
struct synack_src {
	__u8 dst_mac[6], src_mac[6];
	__u32 saddr, daddr; /* of the SYN, network order */
	__u16 sport, dport; /* of the SYN, network order */
	__u32 seq;	    /* the SYN's, host order */
};

#define SYNACK_TCP_MAX 40
#define SYNACK_WORDS (SYNACK_TCP_MAX / 4)

/* Answers a plain SYN (no payload, IPv4 without options, valid checksums)
 * with a cookie SYN+ACK in place: XDP_TX. Returns -1 to leave the SYN to
 * the normal path. */
static __always_inline int answer_syn(struct xdp_md *ctx, struct cookie_state *st, __u64 now_ns)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct tcphdr *tcp = (void *)(ip + 1);
	if ((void *)(tcp + 1) > data_end)
		return -1;
	if (ip->ihl != 5)
		return -1;
	__u32 thl = tcp->doff * 4;
	if (thl < sizeof(*tcp) || bpf_ntohs(ip->tot_len) != 20 + thl)
		return -1; /* options on IP, or payload (TFO): the engine decides */
	if ((void *)tcp + thl > data_end)
		return -1;

	/* Checksums: a damaged SYN gets no answer (the engine counts it). */
	__u64 sum = 0;
	__u16 *w = (void *)ip;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	if ((__u16)fold32(sum) != 0xffff)
		return -1;
	sum = (ip->saddr & 0xffff) + (ip->saddr >> 16) + (ip->daddr & 0xffff) +
	      (ip->daddr >> 16) + bpf_htons(IPPROTO_TCP) + bpf_htons(thl);
	__u8 *tb = (void *)tcp;
	for (int i = 0; i < 30; i++) {
		if (2 * i >= thl)
			break;
		if ((void *)(tb + 2 * i + 2) > data_end)
			return -1;
		sum += *(__u16 *)(tb + 2 * i);
	}
	if ((__u16)fold32(sum) != 0xffff)
		return -1;

	struct opt_walk walk = {};
	if (parse_syn_options(ctx, 14 + 20 + 20, thl - 20, &walk) < 0)
		return -1;
	struct syn_opts o = walk.o;

	struct synack_src s;
	__builtin_memcpy(s.dst_mac, eth->h_source, 6);
	__builtin_memcpy(s.src_mac, eth->h_dest, 6);
	s.saddr = ip->saddr;
	s.daddr = ip->daddr;
	s.sport = tcp->source;
	s.dport = tcp->dest;
	s.seq = bpf_ntohl(tcp->seq);

	/* The engine's tuple bytes: local ip, local port, remote ip, remote port. */
	__u8 tuple[12];
	__builtin_memcpy(tuple, &s.daddr, 4);
	__builtin_memcpy(tuple + 4, &s.dport, 2);
	__builtin_memcpy(tuple + 6, &s.saddr, 4);
	__builtin_memcpy(tuple + 10, &s.sport, 2);

	__u64 now_us = now_ns / 1000 + st->epoch_us;
	__u32 count = (__u32)(now_us / COOKIE_PERIOD_US);
	__u32 idx = 0;
#pragma unroll
	for (int i = 0; i < 8; i++)
		if (mss_table[i] <= o.mss)
			idx = i;
	__u64 extra = ((__u64)s.seq << 32) | count;
	__u32 mac = (__u32)keyed_hash(st, DOMAIN_COOKIE, tuple, extra) & 0x00ffffff;
	__u32 isn = ((count & 0x1f) << 27) | (idx << 24) | mac;

	/* What options::negotiate and synack_options decide for this SYN. */
	int ts = st->timestamps && o.ts;
	int sack = st->sack && o.sack;
	__u32 tsval = 0;
	if (ts) {
		__u32 offset = (__u32)keyed_hash(st, DOMAIN_TS, tuple, 0);
		__u32 clock = (__u32)(now_us / 1000) + offset;
		__u32 ws = o.wscale == WS_NONE ? WS_NONE : o.wscale;
		__u32 v = (clock & ~0x1fU) | (ws << 1) | (__u32)sack;
		/* Never above the clock, so later TSvals stay monotonic. */
		if ((__s32)(v - clock) > 0)
			v -= 0x20;
		tsval = v;
	}

	/* Our TCP header: 20 bytes and MSS, then (only with timestamps, as the
	 * engine) SACK-permitted or two NOPs, TS, and window scale if offered. */
	__u32 hdr[SYNACK_WORDS] = {};
	__u8 *h = (void *)hdr;
	__builtin_memcpy(h, &s.dport, 2);
	__builtin_memcpy(h + 2, &s.sport, 2);
	__u32 nisn = bpf_htonl(isn), nack = bpf_htonl(s.seq + 1);
	__builtin_memcpy(h + 4, &nisn, 4);
	__builtin_memcpy(h + 8, &nack, 4);
	h[13] = 0x12; /* SYN | ACK */
	__u16 win = bpf_htons(st->window);
	__builtin_memcpy(h + 14, &win, 2);
	h[20] = 2;
	h[21] = 4;
	h[22] = st->mss >> 8;
	h[23] = st->mss & 0xff;
	__u32 len = 24;
	if (ts) {
		if (sack) {
			h[24] = 4;
			h[25] = 2;
		} else {
			h[24] = 1;
			h[25] = 1;
		}
		h[26] = 8;
		h[27] = 10;
		__u32 a = bpf_htonl(tsval), b = bpf_htonl(o.tsval);
		__builtin_memcpy(h + 28, &a, 4);
		__builtin_memcpy(h + 32, &b, 4);
		len = 36;
		if (o.wscale != WS_NONE) {
			h[36] = 1;
			h[37] = 3;
			h[38] = 3;
			h[39] = st->wscale;
			len = 40;
		}
	}
	h[12] = (len / 4) << 4;

	struct iphdr iph = {};
	iph.version = 4;
	iph.ihl = 5;
	iph.tot_len = bpf_htons(20 + len);
	iph.frag_off = bpf_htons(0x4000); /* DF */
	iph.ttl = 64;
	iph.protocol = IPPROTO_TCP;
	iph.saddr = s.daddr;
	iph.daddr = s.saddr;
	__u16 *iw = (void *)&iph;
	sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += iw[i];
	iph.check = ~(__u16)fold32(sum);

	sum = (s.saddr & 0xffff) + (s.saddr >> 16) + (s.daddr & 0xffff) + (s.daddr >> 16) +
	      bpf_htons(IPPROTO_TCP) + bpf_htons(len);
#pragma unroll
	for (int i = 0; i < SYNACK_WORDS; i++)
		sum += (hdr[i] & 0xffff) + (hdr[i] >> 16); /* unused words are 0 */
	__u16 tcheck = ~(__u16)fold32(sum);
	__builtin_memcpy(h + 16, &tcheck, 2);

	int delta = (int)(14 + 20 + len) - (int)((long)data_end - (long)data);
	if (delta && bpf_xdp_adjust_tail(ctx, delta))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)eth + 14 + 20 + SYNACK_TCP_MAX > data_end) {
		/* Shorter than the largest header: write the two sizes apart. */
		if ((void *)eth + 14 + 20 + 24 > data_end)
			return XDP_DROP; /* resized, but not as asked: cannot happen */
	}
	__builtin_memcpy(eth->h_dest, s.dst_mac, 6);
	__builtin_memcpy(eth->h_source, s.src_mac, 6);
	eth->h_proto = bpf_htons(ETH_P_IP);
	ip = (void *)(eth + 1);
	__builtin_memcpy(ip, &iph, 20);
	__u32 *out = (void *)(ip + 1);
#pragma unroll
	for (int i = 0; i < SYNACK_WORDS; i++) {
		if ((void *)(out + i + 1) > data_end)
			break;
		out[i] = hdr[i];
	}
	__u32 slot = rst_slot(s.saddr, s.daddr, s.sport, s.dport);
	struct cookie_rst *e = bpf_map_lookup_elem(&cookie_rsts, &slot);
	if (e) {
		e->saddr = s.saddr;
		e->daddr = s.daddr;
		e->sport = s.sport;
		e->dport = s.dport;
		e->seq = s.seq + 1;
	}
	__sync_fetch_and_add(&st->sent, 1);
	/* A busy second keeps the flood mode on (racy between CPUs: harmless). */
	__sync_fetch_and_add(&st->window_syns, 1);
	if (now_ns - st->window_start_ns >= 1000000000ULL) {
		if (st->window_syns >= st->sustain_syns)
			st->flood_until_ns = now_ns + st->hold_ns;
		st->window_start_ns = now_ns;
		st->window_syns = 0;
	}
	return XDP_TX;
}

#endif
