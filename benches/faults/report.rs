//! The fault benchmark's report: the Markdown tables, and an SVG chart written by hand (two
//! panels of rectangles and text; a plotting crate would bring more code than it saves).

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::support::{first_line, kubectl, machine, median};
use crate::{Outcome, Run, Settings, Step};

/// The machine and the versions under test.
#[derive(Debug, Serialize, Deserialize)]
pub struct Environment {
    pub machine: String,
    pub plugin: String,
    pub kubectl: String,
    pub busybox: String,
    pub gzip: String,
    pub kubesim: String,
    pub total_seconds: f64,
    pub settings: Settings,
}

impl Environment {
    pub fn collect(plugin: &Path, total_seconds: f64, settings: Settings) -> Environment {
        Environment {
            machine: machine(),
            plugin: first_line(Command::new(plugin).arg("version")),
            kubectl: first_line(Command::new(kubectl()).args(["version", "--client"]))
                .replace("Client Version: ", "kubectl "),
            busybox: first_line(Command::new("sh").args(["-c", "busybox 2>&1 | head -1"]))
                .replace(" multi-call binary.", " (the containers' userland)"),
            gzip: first_line(Command::new("gzip").arg("--version")),
            kubesim: format!(
                "kubesim (in process), API v{}",
                kubesim::sim::SERVER_VERSION.2.trim_start_matches('v')
            ),
            total_seconds,
            settings,
        }
    }
}

/// Everything one benchmark run produced; saved as faults.json.
#[derive(Debug, Serialize, Deserialize)]
pub struct Results {
    pub environment: Environment,
    pub tools: Vec<String>,
    pub runs: Vec<Run>,
    /// The paired-writer row (`paired`), which may be measured alone and merged in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paired_settings: Option<crate::paired::PairedSettings>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paired: Vec<crate::paired::PairedRun>,
}

/// Writes faults.md, faults.json and faults.svg to benches/results; returns the Markdown.
pub fn write(results: &Results) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&dir).expect("create benches/results");
    let mut md = markdown(&results.environment, &results.tools, &results.runs);
    if let Some(ps) = &results.paired_settings {
        md.push_str(&crate::paired::markdown(ps, &results.paired));
    }
    std::fs::write(dir.join("faults.md"), &md).expect("write faults.md");
    std::fs::write(
        dir.join("faults.json"),
        serde_json::to_string_pretty(results).expect("serialize the results") + "\n",
    )
    .expect("write faults.json");
    std::fs::write(dir.join("faults.svg"), svg(&results.tools, &results.runs))
        .expect("write faults.svg");
    md
}

const MIB: f64 = (1u64 << 20) as f64;

/// Runs of one (scenario, data set, tool), in the order they were run.
struct Group<'a> {
    scenario: &'a str,
    dataset: &'a str,
    tool: &'a str,
    runs: Vec<&'a Run>,
}

fn groups(runs: &[Run]) -> Vec<Group<'_>> {
    let mut out: Vec<Group> = Vec::new();
    for r in runs {
        match out
            .iter_mut()
            .find(|g| g.scenario == r.scenario && g.dataset == r.dataset && g.tool == r.tool)
        {
            Some(g) => g.runs.push(r),
            None => out.push(Group {
                scenario: &r.scenario,
                dataset: &r.dataset,
                tool: &r.tool,
                runs: vec![r],
            }),
        }
    }
    out
}

impl Group<'_> {
    fn med(&self, f: impl Fn(&Step) -> f64, which: fn(&Run) -> Option<&Step>) -> Option<f64> {
        let v: Vec<f64> = self.runs.iter().filter_map(|r| which(r)).map(f).collect();
        (!v.is_empty()).then(|| median(v))
    }
    fn backup(&self, f: impl Fn(&Step) -> f64) -> Option<f64> {
        self.med(f, |r| r.backup.as_ref())
    }
    fn restore(&self, f: impl Fn(&Step) -> f64) -> Option<f64> {
        self.med(f, |r| r.restore.as_ref())
    }
    /// Median size of what the backups stored.
    fn stored(&self) -> Option<f64> {
        let v: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| r.stored_bytes)
            .map(|b| b as f64)
            .collect();
        (!v.is_empty()).then(|| median(v))
    }
    fn bytes(&self) -> u64 {
        self.runs[0].dataset_bytes
    }

    /// What else the outcome grid says: retries that saved a run, and whether a failed restore
    /// left its target as it was.
    fn note(&self) -> Option<String> {
        let mut notes = Vec::new();
        if self
            .runs
            .iter()
            .any(|r| r.attempts.unwrap_or(1) > 1 || r.restore_attempts.unwrap_or(1) > 1)
        {
            notes.push(format!("attempts {}", self.attempts()));
        }
        let after: Vec<&str> = self
            .runs
            .iter()
            .filter_map(|r| r.target_after_failure.as_deref())
            .collect();
        if after.iter().any(|a| a.starts_with("changed")) {
            notes.push("target left changed".into());
        } else if !after.is_empty() {
            notes.push("target unchanged".into());
        }
        (!notes.is_empty()).then(|| notes.join(", "))
    }

    /// "survived", or "2× survived, 1× detected at restore" when runs disagree.
    fn outcome(&self) -> String {
        let label = |r: &Run| match (&r.outcome, &r.failed_at) {
            (Outcome::Detected | Outcome::Hung, Some(at)) => {
                format!("{} at {at}", r.outcome.label())
            }
            (o, _) => o.label().to_string(),
        };
        let mut counts: Vec<(String, usize)> = Vec::new();
        for r in &self.runs {
            let l = label(r);
            match counts.iter_mut().find(|(k, _)| *k == l) {
                Some((_, n)) => *n += 1,
                None => counts.push((l, 1)),
            }
        }
        if counts.len() == 1 {
            return counts.remove(0).0;
        }
        counts
            .iter()
            .map(|(l, n)| format!("{n}× {l}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The worst outcome over the runs, for the chart's colour.
    fn worst(&self) -> Outcome {
        let rank = |o: Outcome| match o {
            Outcome::Survived => 0,
            Outcome::Detected => 1,
            Outcome::Hung => 2,
            Outcome::SilentlyWrong => 3,
        };
        self.runs
            .iter()
            .map(|r| r.outcome)
            .max_by_key(|o| rank(*o))
            .unwrap_or(Outcome::Detected)
    }

    fn attempts(&self) -> String {
        let v: Vec<String> = self
            .runs
            .iter()
            .map(|r| {
                let n = |a: Option<u32>| a.map(|a| a.to_string()).unwrap_or("–".into());
                format!("{} / {}", n(r.attempts), n(r.restore_attempts))
            })
            .collect();
        v.join("; ")
    }
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.2}")).unwrap_or("–".into())
}

fn rate(bytes: u64, s: Option<f64>) -> String {
    s.map(|s| bytes as f64 / MIB / s)
        .map(|r| {
            if r < 10.0 {
                format!("{r:.1}")
            } else {
                format!("{r:.0}")
            }
        })
        .unwrap_or("–".into())
}

fn mib(v: Option<f64>) -> String {
    v.map(|b| format!("{:.0}", b / MIB)).unwrap_or("–".into())
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The scenario order of the report (also the chart's rows).
fn scenarios(runs: &[Run]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in runs {
        let key = scenario_key(r);
        if !v.contains(&key) {
            v.push(key);
        }
    }
    v
}

/// The scenario, qualified by data set where a scenario runs on several.
fn scenario_key(r: &Run) -> String {
    match r.scenario.as_str() {
        "clean" | "slow link" => format!("{}, {}", r.scenario, r.dataset),
        _ => r.scenario.clone(),
    }
}

pub fn markdown(env: &Environment, tools: &[String], runs: &[Run]) -> String {
    let s = &env.settings;
    let gs = groups(runs);
    let mut md = String::new();
    md.push_str("# Fault-tolerance benchmark\n\n");
    md.push_str(&format!(
        "Produced by `cargo bench --bench faults` in {:.0} s on kubesim. Machine: {}.\n\n\
         Versions: {}; {}; {}; {}; {}.\n\n\
         Data: a mixed volume ({} MiB: 64 MiB files, half random and half JSON-like, plus small \
         random files), {} small files (512 B–8 KiB, half text), a second mixed volume of {} MiB \
         for the fault scenarios, and {} MiB of compressible and of incompressible data for the \
         slow link. Clean round trips: medians of {} runs; fault scenarios (on the {} MiB mixed \
         volume) and slow link: {} run(s) each. Outage: {} s; slow link: \
         {:.1} MiB/s per exec stream and direction. A step under a fault that gives no result \
         within {}× the tool's slowest clean step (plus the outage, at least {} s) counts as hung: \
         it gets SIGINT like a user's Ctrl-C, then SIGKILL {} s later.\n\n",
        env.total_seconds,
        env.machine,
        env.plugin,
        env.kubectl,
        env.busybox,
        env.gzip,
        env.kubesim,
        s.mixed_mib,
        s.small_files,
        s.fault_mib,
        s.slow_mib,
        s.runs,
        s.fault_mib,
        s.fault_runs,
        s.outage_secs,
        s.slow_rate as f64 / MIB,
        crate::HANG_FACTOR,
        crate::HANG_FLOOR_SECS,
        crate::support::INTERRUPT_GRACE.as_secs(),
    ));
    md.push_str(
        "Every round trip restores into a separate volume that an idle workload pod mounts \
         (kubectl-pvbackup therefore runs `restore --force --yes`), and is judged by the sha256 \
         of every file against the original: **detected** = a step exited non-zero (at backup or \
         at restore), **survived** = every file intact, **silently wrong** = every step exited 0 \
         but files differ, are missing or extra. The hand-rolled baseline runs under \
         `set -o pipefail`. Times are wall-clock seconds of the client command; CPU and peak \
         RSS are the client's (with its children: kubectl, gzip), from wait4; exec MiB are the \
         bytes kubesim carried over exec streams during the step (both directions).\n\n",
    );

    md.push_str("## Outcomes\n\n| scenario |");
    for t in tools {
        md.push_str(&format!(" {} |", cell(t)));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(tools.len()));
    md.push('\n');
    for sc in scenarios(runs) {
        md.push_str(&format!("| {} |", cell(&sc)));
        for t in tools {
            let g = gs
                .iter()
                .find(|g| g.tool == t && scenario_key(g.runs[0]) == sc);
            let text = match g {
                Some(g) => match g.note() {
                    Some(n) => format!("{} ({n})", g.outcome()),
                    None => g.outcome(),
                },
                None => "–".into(),
            };
            md.push_str(&format!(" {} |", cell(&text)));
        }
        md.push('\n');
    }

    md.push_str(&format!(
        "\n## Clean round trips (medians of {} runs)\n\n\
         | data set | tool | backup s | backup MiB/s | restore s | restore MiB/s | client CPU s (backup + restore) | peak RSS MiB (backup / restore) | exec MiB (backup / restore) | stored MiB | outcome |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        s.runs
    ));
    for g in gs.iter().filter(|g| g.scenario == "clean") {
        let b = g.backup(|x| x.seconds);
        let r = g.restore(|x| x.seconds);
        let cpu = g.backup(|x| x.cpu_seconds).unwrap_or(0.0)
            + g.restore(|x| x.cpu_seconds).unwrap_or(0.0);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.0} / {:.0} | {} / {} | {} | {} |\n",
            cell(g.dataset),
            cell(g.tool),
            secs(b),
            rate(g.bytes(), b),
            secs(r),
            rate(g.bytes(), r),
            cpu,
            g.backup(|x| x.peak_rss_mib).unwrap_or(0.0),
            g.restore(|x| x.peak_rss_mib).unwrap_or(0.0),
            mib(g.backup(|x| (x.exec_bytes_out + x.exec_bytes_in) as f64)),
            mib(g.restore(|x| (x.exec_bytes_out + x.exec_bytes_in) as f64)),
            mib(g.stored()),
            cell(&g.outcome()),
        ));
    }

    md.push_str(
        "\n## Fault scenarios\n\n\
         | scenario | tool | outcome | attempts (backup / restore) | backup s | restore s | exec MiB (backup / restore) | target after a failed restore | helper pods left | what happened |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for g in gs
        .iter()
        .filter(|g| !matches!(g.scenario, "clean" | "slow link"))
    {
        let after: Vec<&str> = g
            .runs
            .iter()
            .filter_map(|r| r.target_after_failure.as_deref())
            .collect();
        let detail: Vec<String> = g
            .runs
            .iter()
            .map(|r| {
                let mut d = r.detail.clone();
                if let Some(drift) = &r.drift {
                    d = format!("fresh backup of the rotten volume: {drift}; old backup restored over it: {d}");
                }
                if let Some(false) = r
                    .backup
                    .as_ref()
                    .and_then(|b| b.fault_injected)
                    .or(r.restore.as_ref().and_then(|b| b.fault_injected))
                {
                    d = format!("(the fault never fired) {d}");
                }
                d
            })
            .collect();
        let mut detail = detail;
        detail.dedup();
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |\n",
            cell(g.scenario),
            cell(g.tool),
            cell(&g.outcome()),
            g.attempts(),
            secs(g.backup(|x| x.seconds)),
            secs(g.restore(|x| x.seconds)),
            mib(g.backup(|x| (x.exec_bytes_out + x.exec_bytes_in) as f64)),
            mib(g.restore(|x| (x.exec_bytes_out + x.exec_bytes_in) as f64)),
            if after.is_empty() {
                "–".to_string()
            } else {
                cell(&after.join("; "))
            },
            g.runs.iter().map(|r| r.leftover_helper_pods).sum::<usize>(),
            cell(&detail.join(" / ")),
        ));
    }

    md.push_str(&format!(
        "\n## Slow link ({:.1} MiB/s per exec stream; {} run(s))\n\n\
         | data | tool | backup s | restore s | exec MiB (backup / restore) | stored MiB | outcome |\n\
         |---|---|---|---|---|---|---|\n",
        s.slow_rate as f64 / MIB,
        s.fault_runs
    ));
    for g in gs.iter().filter(|g| g.scenario == "slow link") {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} / {} | {} | {} |\n",
            cell(g.dataset),
            cell(g.tool),
            secs(g.backup(|x| x.seconds)),
            secs(g.restore(|x| x.seconds)),
            mib(g.backup(|x| (x.exec_bytes_out + x.exec_bytes_in) as f64)),
            mib(g.restore(|x| (x.exec_bytes_out + x.exec_bytes_in) as f64)),
            mib(g.stored()),
            cell(&g.outcome()),
        ));
    }
    md.push_str("\nEvery run, with exit codes, exec byte counts and the tools' last stderr line: [faults.json](faults.json). Chart: [faults.svg](faults.svg).\n");
    md
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Two panels: the outcome of every scenario for every tool (a coloured grid), and the clean
/// round trips' backup and restore throughput per data set.
pub fn svg(tools: &[String], runs: &[Run]) -> String {
    let gs = groups(runs);
    let rows = scenarios(runs);
    let (label_w, col_w, row_h, top) = (290.0, 190.0, 32.0, 90.0);
    let width = label_w + col_w * tools.len() as f64 + 20.0;
    let grid_h = row_h * rows.len() as f64;
    // Grouped by data set, tools in run order within each.
    let mut clean: Vec<&Group> = gs.iter().filter(|g| g.scenario == "clean").collect();
    let datasets: Vec<&str> = {
        let mut v: Vec<&str> = Vec::new();
        for g in &clean {
            if !v.contains(&g.dataset) {
                v.push(g.dataset);
            }
        }
        v
    };
    clean.sort_by_key(|g| datasets.iter().position(|d| *d == g.dataset));
    let bar_h = 14.0;
    let chart_top = top + grid_h + 80.0;
    let chart_h = clean.len() as f64 * (2.0 * bar_h + 10.0);
    let height = chart_top + chart_h + 40.0;
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"24\" font-size=\"16\" font-weight=\"bold\">Fault tolerance on kubesim: outcome per scenario and tool</text>\n\
         <text x=\"10\" y=\"44\" fill=\"#555\">green: survived (data intact) · amber: detected (failed loudly) · purple: hung (killed by the bench) · red: silently wrong (exit 0, data differs)</text>\n"
    );
    for (i, t) in tools.iter().enumerate() {
        // "kubectl-pvbackup --compression none" on two lines: name, then settings.
        let (name, settings) = match t.strip_prefix("kubectl-pvbackup ") {
            Some(rest) => ("kubectl-pvbackup", rest),
            None => (t.as_str(), ""),
        };
        let x = label_w + col_w * (i as f64 + 0.5);
        o.push_str(&format!(
            "<text x=\"{x:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\n\
             <text x=\"{x:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-size=\"11\">{}</text>\n",
            top - 22.0,
            esc(name),
            top - 8.0,
            esc(settings)
        ));
    }
    for (j, sc) in rows.iter().enumerate() {
        let y = top + row_h * j as f64;
        o.push_str(&format!(
            "<text x=\"10\" y=\"{:.0}\">{}</text>\n",
            y + row_h * 0.62,
            esc(sc)
        ));
        for (i, t) in tools.iter().enumerate() {
            let Some(g) = gs
                .iter()
                .find(|g| g.tool == t && &scenario_key(g.runs[0]) == sc)
            else {
                continue;
            };
            let fill = match g.worst() {
                Outcome::Survived => "#7bc87b",
                Outcome::Detected => "#f2c14e",
                Outcome::SilentlyWrong => "#e05d5d",
                Outcome::Hung => "#b58ad6",
            };
            let x = label_w + col_w * i as f64;
            let note = g.note();
            o.push_str(&format!(
                "<rect x=\"{:.0}\" y=\"{:.0}\" width=\"{:.0}\" height=\"{:.0}\" fill=\"{fill}\" stroke=\"white\"/>\n\
                 <text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-size=\"11\">{}</text>\n",
                x,
                y,
                col_w,
                row_h,
                x + col_w / 2.0,
                y + if note.is_some() { row_h * 0.45 } else { row_h * 0.62 },
                esc(&g.outcome())
            ));
            if let Some(n) = note {
                o.push_str(&format!(
                    "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-size=\"9\" fill=\"#333\">{}</text>\n",
                    x + col_w / 2.0,
                    y + row_h * 0.82,
                    esc(&n)
                ));
            }
        }
    }
    // Throughput bars.
    let max = clean
        .iter()
        .flat_map(|g| {
            [
                g.backup(|x| x.seconds).map(|s| g.bytes() as f64 / MIB / s),
                g.restore(|x| x.seconds).map(|s| g.bytes() as f64 / MIB / s),
            ]
        })
        .flatten()
        .fold(1.0f64, f64::max);
    let bar_w = width - label_w - 120.0;
    o.push_str(&format!(
        "<text x=\"10\" y=\"{:.0}\" font-size=\"16\" font-weight=\"bold\">Clean round trips: throughput (MiB/s, median)</text>\n\
         <rect x=\"{:.0}\" y=\"{:.0}\" width=\"12\" height=\"10\" fill=\"#4a7fc1\"/><text x=\"{:.0}\" y=\"{:.0}\">backup</text>\n\
         <rect x=\"{:.0}\" y=\"{:.0}\" width=\"12\" height=\"10\" fill=\"#a3c4e8\"/><text x=\"{:.0}\" y=\"{:.0}\">restore</text>\n",
        chart_top - 30.0,
        label_w,
        chart_top - 18.0,
        label_w + 16.0,
        chart_top - 9.0,
        label_w + 80.0,
        chart_top - 18.0,
        label_w + 96.0,
        chart_top - 9.0,
    ));
    for (k, g) in clean.iter().enumerate() {
        let y = chart_top + k as f64 * (2.0 * bar_h + 10.0);
        o.push_str(&format!(
            "<text x=\"10\" y=\"{:.0}\" font-size=\"11\">{}</text>\n<text x=\"10\" y=\"{:.0}\" font-size=\"10\" fill=\"#555\">{}</text>\n",
            y + bar_h * 0.8,
            esc(g.tool),
            y + bar_h * 1.8,
            esc(g.dataset)
        ));
        for (n, (v, fill)) in [
            (g.backup(|x| x.seconds), "#4a7fc1"),
            (g.restore(|x| x.seconds), "#a3c4e8"),
        ]
        .into_iter()
        .enumerate()
        {
            let Some(s) = v else { continue };
            let mibs = g.bytes() as f64 / MIB / s;
            let w = bar_w * mibs / max;
            let by = y + n as f64 * bar_h;
            o.push_str(&format!(
                "<rect x=\"{label_w:.0}\" y=\"{by:.0}\" width=\"{w:.1}\" height=\"{:.0}\" fill=\"{fill}\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.0}\" font-size=\"10\">{}</text>\n",
                bar_h - 2.0,
                label_w + w + 4.0,
                by + bar_h * 0.7,
                rate(g.bytes(), Some(s))
            ));
        }
    }
    o.push_str("</svg>\n");
    o
}
