//! What the gateway counts, for Prometheus (`rbdgw serve --metrics ADDR`, text format 0.0.4 at
//! `/metrics`). Names follow Prometheus' conventions: the `rbdgw_` prefix, base units
//! (seconds, bytes), `_total` on counters. One registry per process: the handles that the data
//! path uses per command are resolved once per LU ([`LunIo`]), so a command costs a few atomic
//! additions, not a label lookup.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Command latency buckets (seconds): 100 µs (a memory or cached read) to 10 s (a failover
/// seen from the initiator).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    lun_commands: IntCounterVec,
    lun_bytes: IntCounterVec,
    lun_latency: HistogramVec,
    /// Sessions by type (normal, discovery) and open connections: set at each scrape.
    pub sessions: IntGaugeVec,
    pub connections: IntGauge,
    logins: IntCounterVec,
    refusals: IntCounterVec,
    pub lock_handovers: IntCounter,
    pub fencings: IntCounter,
    pub alua_changes: IntCounter,
}

/// The process' metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// Registers a collector built from `opts`: the names and labels are this module's constants,
/// so a failure is a programming error caught by the tests.
fn registered<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric names and labels are valid and unique");
    c
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let lun = ["target", "lun", "image", "op"];
        let build = registered(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "rbdgw_build_info",
                    "The running rbdgw: its version (value 1).",
                ),
                &["version"],
            )
            .expect("valid"),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Metrics {
            lun_commands: registered(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "rbdgw_lun_commands_total",
                        "Read and write commands completed on a LUN through this gateway.",
                    ),
                    &lun,
                )
                .expect("valid"),
            ),
            lun_bytes: registered(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "rbdgw_lun_bytes_total",
                        "Bytes read and written by the LUN's commands that succeeded.",
                    ),
                    &lun,
                )
                .expect("valid"),
            ),
            lun_latency: registered(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "rbdgw_lun_command_duration_seconds",
                        "Time from a read or write command's arrival (with its immediate \
                         data) to its response.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &lun,
                )
                .expect("valid"),
            ),
            sessions: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new("rbdgw_sessions", "iSCSI sessions open on this gateway."),
                    &["type"],
                )
                .expect("valid"),
            ),
            connections: registered(
                &r,
                IntGauge::new(
                    "rbdgw_connections",
                    "TCP connections open on this gateway's portals (logging in or in sessions).",
                )
                .expect("valid"),
            ),
            logins: registered(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "rbdgw_logins_total",
                        "Logins by result (accepted, refused) and reason of a refusal.",
                    ),
                    &["result", "reason"],
                )
                .expect("valid"),
            ),
            refusals: registered(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "rbdgw_admission_refusals_total",
                        "Connections, logins and commands refused for a bound (--max-* flags, \
                         command memory: TASK SET FULL), by bound.",
                    ),
                    &["bound"],
                )
                .expect("valid"),
            ),
            lock_handovers: registered(
                &r,
                IntCounter::new(
                    "rbdgw_lock_handovers_total",
                    "Write locks this gateway handed to another gateway that asked for them.",
                )
                .expect("valid"),
            ),
            fencings: registered(
                &r,
                IntCounter::new(
                    "rbdgw_fencings_total",
                    "Gateways this one fenced (blocklisted, lock broken) to take a LU over.",
                )
                .expect("valid"),
            ),
            alua_changes: registered(
                &r,
                IntCounter::new(
                    "rbdgw_alua_owner_changes_total",
                    "Changes of a LU's ALUA owner (active/optimized port group) seen here.",
                )
                .expect("valid"),
            ),
            registry: r,
        }
    }

    /// The handles of one LU's commands.
    pub fn lun_io(&self, target: &str, lun: u64, image: &str) -> Arc<LunIo> {
        let lun = lun.to_string();
        let for_op = |op: &str| OpIo {
            commands: self
                .lun_commands
                .with_label_values(&[target, &lun, image, op]),
            bytes: self.lun_bytes.with_label_values(&[target, &lun, image, op]),
            latency: self
                .lun_latency
                .with_label_values(&[target, &lun, image, op]),
        };
        Arc::new(LunIo {
            read: for_op("read"),
            write: for_op("write"),
        })
    }

    /// A login's outcome: `reason` is empty for an accepted one.
    pub fn login(&self, accepted: bool, reason: &str) {
        let result = if accepted { "accepted" } else { "refused" };
        self.logins.with_label_values(&[result, reason]).inc();
    }

    pub fn refusal(&self, bound: &str) {
        self.refusals.with_label_values(&[bound]).inc();
    }

    /// The text exposition of everything.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // (Writing to a Vec fails only on an invalid family, which `new` never registers.)
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The reason label of a refused login (RFC 7143 §11.13.5's status names).
pub fn login_refusal(status: iscsi::login::LoginStatus) -> &'static str {
    match status.0 {
        0x0201 => "authentication_failure",
        0x0202 => "authorization_failure",
        0x0203 | 0x0204 => "not_found",
        0x0301 => "service_unavailable",
        0x0302 => "out_of_resources",
        0x0200..=0x02ff => "initiator_error",
        _ => "target_error",
    }
}

/// One direction of a LU's I/O.
pub struct OpIo {
    commands: IntCounter,
    bytes: IntCounter,
    latency: Histogram,
}

/// A LU's read and write counters.
pub struct LunIo {
    pub read: OpIo,
    pub write: OpIo,
}

impl LunIo {
    /// Read commands, write commands, bytes read, bytes written, so far.
    pub fn totals(&self) -> [u64; 4] {
        [
            self.read.commands.get(),
            self.write.commands.get(),
            self.read.bytes.get(),
            self.write.bytes.get(),
        ]
    }

    /// The direction of a CDB's data, for the commands counted: READ and WRITE (6, 10, 12,
    /// 16; SBC-3 §5), WRITE AND VERIFY, COMPARE AND WRITE. Others (inquiry, TEST UNIT READY,
    /// reservations) are not I/O.
    pub fn of(&self, opcode: u8) -> Option<&OpIo> {
        match opcode {
            0x08 | 0x28 | 0xa8 | 0x88 => Some(&self.read),
            0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0x8e | 0x89 => Some(&self.write),
            _ => None,
        }
    }
}

impl OpIo {
    /// One command done after `took`; `bytes` moved if it succeeded.
    pub fn done(&self, took: Duration, bytes: Option<u64>) {
        self.commands.inc();
        if let Some(b) = bytes {
            self.bytes.inc_by(b);
        }
        self.latency.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family_with_help_and_type() {
        let m = metrics();
        m.lun_io("iqn.2026-11.org.rbdgw:t", 3, "rbd/a\"b")
            .write
            .done(Duration::from_millis(2), Some(4096));
        m.login(false, "service unavailable");
        let text = String::from_utf8(m.render()).unwrap();
        for family in [
            "rbdgw_build_info",
            "rbdgw_lun_commands_total",
            "rbdgw_lun_bytes_total",
            "rbdgw_lun_command_duration_seconds",
            "rbdgw_logins_total",
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family}\n{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family}\n{text}"
            );
        }
        assert!(
            text.contains(
                r#"rbdgw_lun_bytes_total{image="rbd/a\"b",lun="3",op="write",target="iqn.2026-11.org.rbdgw:t"} 4096"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"rbdgw_lun_command_duration_seconds_bucket{image="rbd/a\"b",lun="3",op="write",target="iqn.2026-11.org.rbdgw:t",le="0.0025"} 1"#),
            "{text}"
        );
    }
}
