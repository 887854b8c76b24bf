//! Static records: RFC 1035 zone files, loaded and looked up.
//!
//! Owns parsing (hickory-proto's zone-file parser, with line numbers recovered for errors), the
//! per-zone checks an authoritative server makes at load time (SOA and NS at the apex, records
//! inside the origin, CNAME alone at its name, DS only at a delegation with a digest of the
//! right length), and the static lookup: [`Zones::lookup`] is the
//! one function that decides what a name and type get from the zones. It follows CNAMEs inside
//! our zones (a loop, or more than [`MAX_CNAME_CHAIN`], breaks the chain), stops at delegation
//! cuts with a referral and its glue (RFC 1034 §4.3.2; glue is never an answer; a DS at a cut
//! is the parent's, even when the child zone is ours too), synthesises
//! wildcard matches (RFC 4592), answers ANY with one RRset (RFC 8482), tells NODATA (also of
//! empty non-terminals) from NXDOMAIN, and hands a name that a service answers back to the
//! caller ([`End::Service`]). It does not build DNS messages: that is `crate::dns`.
//! Key types: [`Zones`], [`Zone`], [`Lookup`], [`End`].

mod parse;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::config::{ConfigError, ZoneSpec};
use crate::dnssec::ZoneSigner;

/// One RRset of a node.
#[derive(Debug, Clone)]
struct RrSet {
    rtype: RecordType,
    /// Exactly as long as the RRset (a `Vec` collected from a filter keeps room for 4 records,
    /// about 1 KB more per RRset: issue 18).
    records: Box<[Record]>,
}

/// A name in a zone: its RRsets (none for an empty non-terminal or a dynamic-only name).
#[derive(Debug, Clone, Default)]
struct Node {
    rrsets: Vec<RrSet>,
    /// A service answers A, AAAA (and ANY) at this name.
    dynamic: bool,
}

impl Node {
    fn get(&self, rtype: RecordType) -> Option<&[Record]> {
        self.rrsets
            .iter()
            .find(|s| s.rtype == rtype)
            .map(|s| &s.records[..])
    }
}

/// How many CNAMEs a lookup follows inside our zones; a chain that needs one more, or that
/// loops, is broken (BIND follows 16; chains this deep are a misconfiguration).
pub(crate) const MAX_CNAME_CHAIN: usize = 8;

/// What the zones answer for a name and type: [`Zones::lookup`]'s result.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    /// True unless the name asked for is itself at or below a delegation (a referral is not
    /// authoritative, RFC 1034 §4.3.2; one reached through an in-zone CNAME keeps AA for it).
    pub(crate) authoritative: bool,
    /// The CNAMEs followed, in order; the first is owned by the name asked for.
    pub(crate) chain: Vec<Record>,
    /// Where the chain (or the name itself) ends.
    pub(crate) end: End,
}

/// Where a lookup ends.
#[derive(Debug, Clone)]
pub(crate) enum End {
    /// The RRset asked for (for ANY: one RRset of the name), owned by the last name of the
    /// chain (the name asked for when there is no chain; wildcard matches are synthesised with
    /// it as owner), and the in-zone addresses of the names its NS, MX and SRV records point at
    /// (never glue from below a delegation).
    Answer {
        /// The records.
        records: Vec<Record>,
        /// Additional-section addresses.
        additional: Vec<Record>,
    },
    /// The name exists (possibly as an empty non-terminal) but has no RRset of the type.
    NoData {
        /// The zone's SOA with the negative TTL (RFC 2308 §3).
        soa: Record,
    },
    /// The name does not exist (RFC 6604: the RCODE is that of the last name of a chain).
    NxDomain {
        /// The zone's SOA with the negative TTL (RFC 2308 §3).
        soa: Record,
    },
    /// The name is at or below a delegation: the NS RRset of the cut and its glue.
    Referral {
        /// The NS RRset of the cut.
        ns: Vec<Record>,
        /// The addresses of the NS targets held in the zone (glue).
        glue: Vec<Record>,
    },
    /// A service answers this name (A, AAAA or ANY asked): the caller asks the policy.
    Service {
        /// The service's name, as the owner of the addresses.
        owner: Name,
        /// The zone's SOA with the negative TTL, for a NODATA answer.
        soa: Record,
    },
    /// The chain leaves our zones: the resolver follows the last CNAME.
    Outside,
    /// A CNAME loop, or a chain longer than [`MAX_CNAME_CHAIN`]: SERVFAIL.
    Broken,
}

/// One step of a lookup: an end, or a CNAME to follow.
enum Step {
    End(End),
    Cname(Record),
}

/// One loaded zone.
#[derive(Debug, Clone)]
pub(crate) struct Zone {
    origin: LowerName,
    nodes: HashMap<LowerName, Node>,
    /// Delegation points below the apex (names with NS that are not the apex).
    cuts: Vec<LowerName>,
    has_wildcards: bool,
    /// The zone's DNSSEC signer, when `dnssec` is configured for it.
    signer: Option<Arc<ZoneSigner>>,
}

impl Zone {
    /// Returns the SOA record of the apex.
    pub(crate) fn soa(&self) -> &Record {
        // Invariant: `parse::load_zone` refuses a zone without exactly one SOA at the apex.
        &self.nodes[&self.origin]
            .get(RecordType::SOA)
            .expect("zone has an SOA at its apex")[0]
    }

    /// Returns the TTL to use for the SOA in negative answers (RFC 2308 §3: min(TTL, MINIMUM)).
    pub(crate) fn negative_ttl(&self) -> u32 {
        let soa = self.soa();
        match &soa.data {
            RData::SOA(s) => soa.ttl.min(s.minimum),
            _ => soa.ttl,
        }
    }

    /// Returns the SOA with the TTL of negative answers, for the authority section.
    pub(crate) fn negative_soa(&self) -> Record {
        let mut soa = self.soa().clone();
        soa.ttl = self.negative_ttl();
        soa
    }

    /// Looks up `name` (inside this zone) for `rtype`: one step of [`Zones::lookup`].
    fn step(&self, name: &LowerName, rtype: RecordType) -> Step {
        if let Some(ns) = self.cut_for(name) {
            // At or below a delegation point we are not authoritative (RFC 1034 §4.3.2), for
            // any type, ANY and the glue's own addresses included; only a DS query at the cut
            // itself belongs to the parent (RFC 4035 §3.1.4.1).
            if !(rtype == RecordType::DS && self.cuts.contains(name)) {
                return Step::End(End::Referral {
                    ns: ns.to_vec(),
                    glue: self.addresses_for(ns, true),
                });
            }
        }
        let (node, wildcard_owner) = match self.nodes.get(name) {
            Some(node) => (node, None),
            None => match self.wildcard(name) {
                // RFC 4592 §3.3.1: the match is synthesised with the query name as owner.
                Some(node) => (node, Some(Name::from(name.clone()))),
                None => {
                    return Step::End(End::NxDomain {
                        soa: self.negative_soa(),
                    });
                }
            },
        };
        let owned = |records: &[Record]| -> Vec<Record> {
            let mut out = records.to_vec();
            if let Some(owner) = &wildcard_owner {
                for r in &mut out {
                    r.name = owner.clone();
                }
            }
            out
        };
        if node.dynamic && matches!(rtype, RecordType::A | RecordType::AAAA | RecordType::ANY) {
            return Step::End(End::Service {
                owner: Name::from(name.clone()),
                soa: self.negative_soa(),
            });
        }
        let rrset = if rtype == RecordType::ANY {
            // RFC 8482 §4.2: one RRset of the name (the first in type order); a CNAME is
            // returned, not followed.
            node.rrsets
                .iter()
                .min_by_key(|s| u16::from(s.rtype))
                .map(|s| &s.records[..])
        } else {
            node.get(rtype)
        };
        if let Some(records) = rrset {
            return Step::End(End::Answer {
                additional: self.addresses_for(records, false),
                records: owned(records),
            });
        }
        if rtype != RecordType::CNAME
            && let Some(c) = node.get(RecordType::CNAME)
        {
            return Step::Cname(owned(&c[..1]).remove(0));
        }
        Step::End(End::NoData {
            soa: self.negative_soa(),
        })
    }

    /// RFC 4592: finds the closest encloser of `name` (which does not exist) and returns the
    /// node of `*.<closest encloser>`, if there is one.
    fn wildcard(&self, name: &LowerName) -> Option<&Node> {
        if !self.has_wildcards {
            return None;
        }
        let mut encloser = name.base_name();
        while self.origin.zone_of(&encloser) {
            if self.nodes.contains_key(&encloser) {
                let star = Name::from(encloser).prepend_label("*").ok()?;
                return self.nodes.get(&LowerName::new(&star));
            }
            if encloser.is_root() {
                break;
            }
            encloser = encloser.base_name();
        }
        None
    }

    /// Returns the NS RRset of the delegation `name` is at or below, if any.
    fn cut_for(&self, name: &LowerName) -> Option<&[Record]> {
        self.cuts
            .iter()
            .find(|cut| cut.zone_of(name))
            .and_then(|cut| self.nodes.get(cut))
            .and_then(|n| n.get(RecordType::NS))
    }

    /// Returns the zone's A and AAAA records of the names that the NS, MX and SRV records of
    /// `records` point at, each once. Addresses at or below a delegation are glue: only a
    /// referral (`glue`) carries them, never an authoritative answer.
    fn addresses_for(&self, records: &[Record], glue: bool) -> Vec<Record> {
        let mut out: Vec<Record> = Vec::new();
        for r in records {
            let target = match &r.data {
                RData::NS(ns) => &ns.0,
                RData::MX(mx) => &mx.exchange,
                RData::SRV(srv) => &srv.target,
                _ => continue,
            };
            let lower = LowerName::new(target);
            if !self.origin.zone_of(&lower) || (!glue && self.cut_for(&lower).is_some()) {
                continue;
            }
            let Some(node) = self.nodes.get(&lower) else {
                continue;
            };
            for a in node
                .rrsets
                .iter()
                .filter(|s| matches!(s.rtype, RecordType::A | RecordType::AAAA))
                .flat_map(|s| s.records.iter())
            {
                if !out.contains(a) {
                    out.push(a.clone());
                }
            }
        }
        out
    }

    /// Returns true when `name` is this zone's apex.
    pub(crate) fn is_apex(&self, name: &LowerName) -> bool {
        &self.origin == name
    }

    /// Returns the zone's DNSSEC signer, when the zone is signed.
    pub(crate) fn signer(&self) -> Option<&ZoneSigner> {
        self.signer.as_deref()
    }

    /// Returns the types that exist at `name` for an NSEC type bitmap: its RRsets (of the
    /// wildcard it matches when it has no node), A and AAAA for a service name, the DNSKEY,
    /// CDS and CDNSKEY of a signed apex; at a delegation only NS and DS (the rest is not
    /// ours, RFC 4035 §2.3).
    pub(crate) fn types_at(&self, name: &LowerName) -> Vec<u16> {
        let node = self.nodes.get(name).or_else(|| self.wildcard(name));
        let Some(node) = node else {
            return Vec::new();
        };
        let mut types: Vec<u16> = node.rrsets.iter().map(|s| u16::from(s.rtype)).collect();
        if self.cuts.contains(name) {
            types.retain(|t| matches!(t, 2 | 43));
            return types;
        }
        if node.dynamic {
            types.extend([1, 28]);
        }
        if name == &self.origin && self.signer.is_some() {
            types.extend([48, 59, 60]);
        }
        types
    }

    /// Returns the label count of the wildcard `name` was synthesised from (RFC 4034 §3.1.3:
    /// its closest encloser's), or `None` when `name` is a name of the zone.
    pub(crate) fn wildcard_labels(&self, name: &LowerName) -> Option<u8> {
        if self.nodes.contains_key(name) || !self.has_wildcards {
            return None;
        }
        let mut encloser = name.base_name();
        while self.origin.zone_of(&encloser) {
            if self.nodes.contains_key(&encloser) {
                return Some(encloser.num_labels());
            }
            if encloser.is_root() {
                break;
            }
            encloser = encloser.base_name();
        }
        None
    }

    /// Returns the DS RRset at the delegation point `cut`, when the zone file has one (a secure
    /// delegation, RFC 4035 §3.1.4.1); `None` at any other name.
    pub(crate) fn ds_at(&self, cut: &LowerName) -> Option<&[Record]> {
        if !self.cuts.contains(cut) {
            return None;
        }
        self.nodes.get(cut)?.get(RecordType::DS)
    }

    /// Returns true when the zone has static records of `rtype` at `name`.
    pub(crate) fn has_static(&self, name: &LowerName, rtype: RecordType) -> bool {
        self.nodes.get(name).is_some_and(|n| n.get(rtype).is_some())
    }
}

/// Every loaded zone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Zones {
    /// Sorted with the longest origin first, so the first match is the closest zone.
    zones: Vec<Zone>,
}

impl Zones {
    /// Loads every zone file; `dynamic` are names answered by services (they exist in their zone
    /// even without static records). Returns every problem found.
    pub(crate) fn load(
        specs: &[ZoneSpec],
        dynamic: &[String],
        config_file: &Path,
    ) -> Result<Zones, Vec<ConfigError>> {
        let mut zones = Vec::new();
        let mut errors = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            match parse::load_zone(spec, i, config_file) {
                Ok(mut z) => {
                    if let Some(d) = &spec.dnssec {
                        let key_ttl = z.soa().ttl;
                        match crate::dnssec::load_signer(d, &spec.origin, key_ttl) {
                            Ok(signer) => z.signer = Some(Arc::new(signer)),
                            Err(problems) => {
                                errors.extend(problems.into_iter().map(|(key, message)| {
                                    ConfigError::new(
                                        config_file,
                                        format!("zone[{i}].dnssec.{key}"),
                                        message,
                                    )
                                }))
                            }
                        }
                    }
                    zones.push(z);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut zones = Zones { zones };
        zones
            .zones
            .sort_by_key(|z| std::cmp::Reverse(z.origin.num_labels()));
        for name in dynamic {
            let Ok(n) = Name::from_ascii(name) else {
                continue;
            };
            let lower = LowerName::new(&n);
            if let Some(z) = zones.zones.iter_mut().find(|z| z.origin.zone_of(&lower)) {
                parse::insert_with_ancestors(z, &lower);
                if let Some(node) = z.nodes.get_mut(&lower) {
                    node.dynamic = true;
                }
            }
        }
        Ok(zones)
    }

    /// Looks `qname` up for `qtype` in our zones, following CNAMEs from zone to zone; `None`
    /// when `qname` is in none of them (REFUSED). See the module docs for the rules.
    pub(crate) fn lookup(&self, qname: &LowerName, qtype: RecordType) -> Option<Lookup> {
        let mut zone = self.zone_for_type(qname, qtype)?;
        let mut name = qname.clone();
        let mut chain: Vec<Record> = Vec::new();
        // The names the chain has visited, to tell a loop (RFC 1034 §3.6.2 forbids them).
        let mut seen = vec![qname.clone()];
        let end = loop {
            match zone.step(&name, qtype) {
                Step::End(end) => break end,
                Step::Cname(cname) => {
                    let RData::CNAME(target) = &cname.data else {
                        break End::Broken;
                    };
                    let target = LowerName::new(&target.0);
                    chain.push(cname);
                    if chain.len() > MAX_CNAME_CHAIN || seen.contains(&target) {
                        break End::Broken;
                    }
                    match self.zone_for_type(&target, qtype) {
                        Some(z) => zone = z,
                        None => break End::Outside,
                    }
                    seen.push(target.clone());
                    name = target;
                }
            }
        };
        Some(Lookup {
            authoritative: !(chain.is_empty() && matches!(end, End::Referral { .. })),
            chain,
            end,
        })
    }

    /// Returns the zone `name` belongs to (the one with the longest matching origin).
    pub(crate) fn zone_for(&self, name: &LowerName) -> Option<&Zone> {
        self.zones.iter().find(|z| z.origin.zone_of(name))
    }

    /// Returns the zone that answers `rtype` at `name`: [`Zones::zone_for`], except that a DS
    /// at the apex of a zone is the parent's data when the parent is served too (RFC 4035
    /// §3.1.4.1: the parent answers it, signed with the parent's key; the child's apex has no
    /// DS to give, and its NODATA would be signed by the wrong key).
    pub(crate) fn zone_for_type(&self, name: &LowerName, rtype: RecordType) -> Option<&Zone> {
        let zone = self.zone_for(name)?;
        if rtype == RecordType::DS && zone.is_apex(name) && !name.is_root() {
            let parent = self
                .zones
                .iter()
                .find(|z| z.origin != zone.origin && z.origin.zone_of(name));
            return Some(parent.unwrap_or(zone));
        }
        Some(zone)
    }

    /// Returns the (name, type) pairs the zone files answer from their own records: every
    /// RRset of every name, and A and AAAA at a CNAME; not wildcard owners (a query never asks
    /// for them by name) nor a service's A and AAAA. Which of them are static in the end (a
    /// CNAME may lead to a service) is the caller's to judge from the answer.
    pub(crate) fn static_questions(&self) -> impl Iterator<Item = (&LowerName, RecordType)> {
        self.zones.iter().flat_map(|z| {
            z.nodes
                .iter()
                .filter(|(name, _)| !name.is_wildcard())
                .flat_map(|(name, node)| {
                    let cname = node.get(RecordType::CNAME).is_some();
                    let chased = cname.then_some([RecordType::A, RecordType::AAAA]);
                    node.rrsets
                        .iter()
                        .map(|s| s.rtype)
                        .chain(chased.into_iter().flatten())
                        .map(move |t| (name, t))
                })
        })
    }

    /// Returns true when some zone is signed (DNSSEC).
    pub(crate) fn any_signed(&self) -> bool {
        self.zones.iter().any(|z| z.signer.is_some())
    }
}
