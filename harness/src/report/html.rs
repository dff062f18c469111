//! index.html: one self-contained page (no network): the verdict and why, the counts, a
//! block map per volume and generation, the worst blocks, and the repro line.
//!
//! The block map is a canvas with one pixel per block, scaled up by CSS (pixelated), fed
//! from a compact encoding of the class codes (run-length when that is shorter, else
//! base64 of one byte per block): a clean 512 MiB volume costs a few bytes, and the
//! browser, not the report's size, pays for the 131072 cells. Hover names the block,
//! its class and, for problem blocks, why, the owning file and the stamped write.

use std::fmt::Write as _;

use super::escape;
use super::summary::Summary;
use crate::classify::{Classification, Finding, GenerationResult};
use crate::model::{BlockClass, BlockHash, Verdict};
use crate::record::{GenerationRecord, Recording};

/// At most this many problem blocks per generation carry hover details.
const DETAILS_PER_MAP: usize = 5000;
/// Rows in the table of worst blocks.
const WORST_ROWS: usize = 200;

pub fn color(class: BlockClass) -> &'static str {
    match class {
        BlockClass::Ok => "#cfe8c4",
        BlockClass::DataFromTheFuture => "#d7263d",
        BlockClass::CorruptSnapshot => "#f46036",
        BlockClass::DataFromThePast => "#7b2cbf",
        BlockClass::MissingBlock => "#1b1b1e",
        BlockClass::TransportCorruption => "#2e86ab",
        BlockClass::TargetCorruption => "#e0a800",
        BlockClass::Unattributed => "#8d99ae",
        BlockClass::Excluded => "#ececec",
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The block map's data: `{"rle":[[code,count],...]}` or `{"b64":"..."}`.
pub fn encode_classes(classes: &[BlockClass]) -> String {
    let mut runs: Vec<(u8, u64)> = Vec::new();
    for c in classes {
        let code = c.code();
        match runs.last_mut() {
            Some((last, n)) if *last == code => *n += 1,
            _ => runs.push((code, 1)),
        }
    }
    if runs.len() * 8 < classes.len() * 4 / 3 {
        let body: Vec<String> = runs.iter().map(|(c, n)| format!("[{c},{n}]")).collect();
        format!("{{\"rle\":[{}]}}", body.join(","))
    } else {
        let codes: Vec<u8> = classes.iter().map(|c| c.code()).collect();
        format!("{{\"b64\":\"{}\"}}", base64(&codes))
    }
}

/// JSON safe to embed in a <script> element.
fn script_json(value: &serde_json::Value) -> String {
    value.to_string().replace("</", "<\\/")
}

fn details(g: &GenerationRecord, findings: &[Finding]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for f in findings.iter().take(DETAILS_PER_MAP) {
        let owner = g.owners.get(&f.block).cloned().unwrap_or_default();
        let write = f.writes_text();
        map.insert(
            f.block.to_string(),
            serde_json::json!([f.why, owner, write]),
        );
    }
    serde_json::Value::Object(map)
}

fn verdict_color(v: &Verdict) -> &'static str {
    match v {
        Verdict::Pass => "#2b9348",
        Verdict::Fail { .. } => "#d7263d",
        Verdict::CouldNotRun { .. } => "#8d6a00",
    }
}

pub fn render(rec: &Recording, c: &Classification, s: &Summary, verdict: &Verdict) -> String {
    let mut h = String::new();
    let run = &s.run;
    let title = format!("{} — {}", run.scenario, verdict.name());
    let _ = writeln!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>{}</style></head><body>",
        escape(&title),
        CSS
    );
    let _ = writeln!(
        h,
        "<header><h1>{}</h1><span class=\"verdict\" style=\"background:{}\">{}</span></header>",
        escape(&run.scenario),
        verdict_color(verdict),
        escape(&verdict.name().to_uppercase())
    );
    if !verdict.reasons().is_empty() {
        h.push_str("<ul class=\"reasons\">");
        for r in verdict.reasons() {
            let _ = write!(h, "<li>{}</li>", escape(r));
        }
        h.push_str("</ul>\n");
    }
    let _ = writeln!(
        h,
        "<p class=\"repro\">Reproduce: <code id=\"repro\">{}</code> <button onclick=\"navigator.clipboard.writeText(document.getElementById('repro').textContent)\">copy</button></p>",
        escape(&run.repro)
    );

    // Run facts.
    h.push_str("<table class=\"facts\">");
    let packages: Vec<String> = run
        .packages
        .iter()
        .map(|p| format!("{} {}", p.name, p.version))
        .collect();
    let timings: Vec<String> = run
        .timings
        .iter()
        .map(|t| format!("{} {:.1} s", t.phase, t.seconds))
        .collect();
    for (k, v) in [
        ("run", run.run_id.clone()),
        ("scenario file", run.scenario_file.clone()),
        ("seed", run.seed.to_string()),
        ("image", run.image.clone()),
        ("kernel", run.kernel.clone()),
        ("packages", packages.join(", ")),
        ("accelerator", run.accelerator.clone()),
        ("pipeline", run.pipeline.clone()),
        (
            "disks",
            if run.disk.is_empty() {
                "qemu".into()
            } else {
                run.disk.clone()
            },
        ),
        ("timings", timings.join(", ")),
        ("expected", {
            let mut e = s.expected_classes.clone();
            e.extend(s.expected_outcomes.iter().cloned());
            if e.is_empty() {
                "a clean run".into()
            } else {
                e.join(", ")
            }
        }),
        (
            "outcomes",
            if s.outcomes.is_empty() {
                "none".into()
            } else {
                s.outcomes.join(", ")
            },
        ),
    ] {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(&v));
    }
    h.push_str("</table>\n");

    // Counts, doubling as the legend.
    h.push_str("<h2>Blocks</h2><table class=\"counts\"><tr><th>class</th><th>blocks</th><th>culprit</th></tr>");
    for class in BlockClass::ALL {
        let n = c.counts.get(&class).copied().unwrap_or(0);
        let _ = write!(
            h,
            "<tr class=\"{}\"><td><span class=\"sw\" style=\"background:{}\"></span>{}</td><td>{}</td><td>{}</td></tr>",
            if n == 0 { "zero" } else { "" },
            color(class),
            class.name(),
            n,
            class.culprit()
        );
    }
    h.push_str("</table>\n");

    // Block maps.
    let mut maps = Vec::new();
    for (i, g) in c.generations.iter().enumerate() {
        let record = rec
            .volumes
            .iter()
            .find(|v| v.name == g.volume)
            .and_then(|v| v.generations.iter().find(|r| r.generation == g.generation));
        let Some(record) = record else { continue };
        let _ = writeln!(
        h,
        "<section class=\"map\"><h3>volume {} · generation {} ({:?}) · {} blocks{}</h3>\
             <div class=\"bar\">zoom <button data-map=\"{i}\" data-cell=\"1\">1×</button><button data-map=\"{i}\" data-cell=\"2\">2×</button>\
             <button data-map=\"{i}\" data-cell=\"4\">4×</button><button data-map=\"{i}\" data-cell=\"8\">8×</button>\
             <span class=\"hover\" id=\"hover{i}\">hover a block</span></div>\
             <div class=\"scroll\"><canvas id=\"map{i}\"></canvas></div>{}{}{}</section>",
            escape(&g.volume),
            g.generation,
            g.kind,
            g.blocks,
            generation_note(g),
            excluded_note(record),
            cut_note(record),
            oracle_note(record)
        );
        maps.push(format!(
            "{{\"blocks\":{},\"data\":{},\"details\":{}}}",
            g.blocks,
            encode_classes(&g.classes),
            script_json(&details(record, &g.findings))
        ));
    }

    // Worst blocks.
    let mut worst: Vec<(&GenerationResult, &Finding)> = c
        .generations
        .iter()
        .flat_map(|g| g.findings.iter().map(move |f| (g, f)))
        .collect();
    worst.sort_by(|a, b| {
        b.1.class
            .severity()
            .cmp(&a.1.class.severity())
            .then(a.0.volume.cmp(&b.0.volume))
            .then(a.0.generation.cmp(&b.0.generation))
            .then(a.1.block.cmp(&b.1.block))
    });
    let _ = writeln!(
        h,
        "<h2>Worst blocks</h2><p>{} problem block(s){}; every one is in <a href=\"blocks.csv\">blocks.csv</a>.</p>",
        worst.len(),
        if worst.len() > WORST_ROWS { format!(", the first {WORST_ROWS} shown") } else { String::new() }
    );
    if !worst.is_empty() {
        h.push_str("<table class=\"worst\"><tr><th>volume</th><th>gen</th><th>block</th><th>class</th><th>why</th><th>owner</th><th>write</th><th>truth</th><th>snapshot</th><th>transport</th><th>target</th></tr>");
        for (g, f) in worst.iter().take(WORST_ROWS) {
            let record = rec
                .volumes
                .iter()
                .find(|v| v.name == g.volume)
                .and_then(|v| v.generations.iter().find(|r| r.generation == g.generation));
            let b = f.block as usize;
            let short = |col: Option<&Vec<Option<BlockHash>>>| match col {
                None => "-".to_string(),
                Some(c) => c[b].map(|h| h.short()).unwrap_or_else(|| "none".into()),
            };
            let (truth, snap, trans, target, owner) = match record {
                Some(r) => (
                    r.truth[b].short(),
                    short(r.snapshot.as_ref()),
                    short(r.transport.as_ref()),
                    if r.committed {
                        short(r.target.as_ref())
                    } else {
                        "not committed".into()
                    },
                    r.owners.get(&f.block).cloned().unwrap_or_default(),
                ),
                None => Default::default(),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><span class=\"sw\" style=\"background:{}\"></span>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                escape(&g.volume),
                g.generation,
                f.block,
                color(f.class),
                f.class.name(),
                escape(&f.why),
                escape(&owner),
                escape(&f.writes_text()),
                truth,
                snap,
                trans,
                escape(&target)
            );
        }
        h.push_str("</table>\n");
    }

    if !rec.events.console.is_empty() {
        h.push_str("<h2>Guest console</h2><ul class=\"console\">");
        for f in &rec.events.console {
            let _ = write!(
                h,
                "<li><a href=\"console.log\">console.log:{}</a> <code>{}</code></li>",
                f.line_no,
                escape(&f.line)
            );
        }
        h.push_str("</ul>\n");
    }
    if !rec.events.workloads.is_empty() || rec.run.slow.is_some() {
        h.push_str("<h2>Workloads during the backups</h2>");
        if let Some(s) = &rec.run.slow {
            let _ = write!(
                h,
                "<p>Slowed down {}x ({}): QEMU could run {:.1}% of the wall time{}.</p>",
                s.factor,
                escape(&s.method),
                s.duty * 100.0,
                s.qemu_cpu_per_second
                    .map(|c| format!(" and used {c:.2} CPU seconds per second"))
                    .unwrap_or_default()
            );
        }
        h.push_str("<table><tr><th>backup</th><th>workload</th><th>pacing</th><th>steps</th><th>bytes</th><th>ops</th><th>ended</th></tr>");
        for w in &rec.events.workloads {
            let n = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            let _ = write!(
                h,
                "<tr><td>{}</td><td>#{} {} on {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
                w.backup,
                w.index,
                escape(&w.kind),
                escape(&w.volume),
                escape(&w.pacing),
                w.steps.len(),
                n(w.bytes),
                n(w.ops),
                escape(w.stopped_by.as_deref().unwrap_or("-")),
                w.failure
                    .as_ref()
                    .map(|f| format!(" ({})", escape(f)))
                    .unwrap_or_default()
            );
        }
        h.push_str("</table>\n");
        for s in &rec.events.speeds {
            let _ = write!(
                h,
                "<p>Backup {}: {} blocks in {:.1} s ({:.0} blocks/s).</p>",
                s.backup,
                s.blocks,
                s.millis as f64 / 1000.0,
                s.blocks_per_second()
            );
        }
    }
    if !run.witness_disks.is_empty() {
        h.push_str("<h2>Witness disks</h2><ul class=\"notes\">");
        for d in &run.witness_disks {
            let faults: Vec<String> = d
                .faults
                .iter()
                .map(|(spec, fired)| format!("{spec} fired {fired}×"))
                .collect();
            let _ = write!(
                h,
                "<li>{} ({}): <a href=\"{}\">{}</a>, {} bytes, {} records{}; requests {}; {} read, {} written{}{}</li>",
                escape(if d.volume.is_empty() { "extra disk" } else { &d.volume }),
                escape(&d.id),
                escape(&d.history_file),
                escape(&d.history_file),
                d.history_bytes,
                d.records,
                if d.complete {
                    format!(", ended ({})", escape(&d.end))
                } else {
                    ", CUT SHORT".into()
                },
                escape(
                    &d.requests
                        .iter()
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                d.bytes_read,
                d.bytes_written,
                d.schedule
                    .as_ref()
                    .map(|sc| format!("; seeded schedule: {}", escape(sc)))
                    .unwrap_or_default(),
                if faults.is_empty() {
                    String::new()
                } else {
                    format!("; faults: {}", escape(&faults.join("; ")))
                }
            );
        }
        h.push_str("</ul>\n");
    }
    if !rec.events.notes.is_empty() {
        h.push_str("<h2>Run log</h2><ul class=\"notes\">");
        for n in &rec.events.notes {
            let _ = write!(h, "<li>{}</li>", escape(n));
        }
        h.push_str("</ul>\n");
    }
    if !rec.events.harness_errors.is_empty() {
        h.push_str("<h2>Harness errors</h2><ul>");
        for e in &rec.events.harness_errors {
            let _ = write!(h, "<li>{}</li>", escape(e));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("<footer><a href=\"summary.json\">summary.json</a> · <a href=\"blocks.csv\">blocks.csv</a> · <a href=\"junit.xml\">junit.xml</a> · <a href=\"console.log\">console.log</a> · <a href=\"scenario.toml\">scenario.toml</a> · <a href=\"repro.txt\">repro.txt</a></footer>\n");

    let classes: Vec<String> = BlockClass::ALL
        .iter()
        .map(|c| format!("[\"{}\",\"{}\"]", c.name(), color(*c)))
        .collect();
    let _ = writeln!(
        h,
        "<script>\nconst CLASSES=[{}];\nconst MAPS=[{}];\n{}</script>\n</body></html>",
        classes.join(","),
        maps.join(",\n"),
        JS
    );
    h
}

fn generation_note(g: &GenerationResult) -> String {
    let mut parts = Vec::new();
    parts.push(if g.committed {
        "committed".to_string()
    } else {
        "not committed".to_string()
    });
    if !g.outcomes.is_empty() {
        parts.push(
            g.outcomes
                .iter()
                .map(|o| o.name())
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    parts.push(format!("stages: {}", g.stages.join(", ")));
    format!(" · {}", escape(&parts.join(" · ")))
}

/// A generation judged at the history oracle's cut: where its truth came from, and the
/// problem blocks the oracle named.
fn cut_note(g: &GenerationRecord) -> String {
    let crate::record::TruthState::AtCut { cut } = &g.truth_state else {
        return String::new();
    };
    let mut out = format!(
        "<p class=\"excluded\">Truth: {}.</p>",
        escape(&super::truth_from(&g.truth_state))
    );
    let examples: Vec<&String> = cut
        .judgement
        .examples
        .iter()
        .chain(cut.backup.iter().flat_map(|b| &b.examples))
        .collect();
    if !examples.is_empty() {
        out.push_str("<ul class=\"excluded\">");
        for e in examples {
            out.push_str(&format!("<li>{}</li>", escape(e)));
        }
        out.push_str("</ul>");
    }
    out
}

/// The history oracle's word on a generation: the truth image and the backup judged.
fn oracle_note(g: &GenerationRecord) -> String {
    let Some(o) = &g.oracle else {
        return String::new();
    };
    let one = |what: &str, j: &crate::record::OracleJudgement| -> String {
        let counts: Vec<String> = j.counts.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let mut line = format!(
            "{what}: cut {} (span {}, {} of {} blocks explained; {}), announced instant {}; {}",
            j.cut_ns.map_or("-inf".to_string(), |n| format!("{n} ns")),
            j.span,
            j.explained,
            j.judged,
            counts.join(", "),
            j.place,
            if j.agrees {
                "agrees with the truth at the instant".to_string()
            } else {
                format!("DISAGREES on {} block(s)", j.disagreements)
            }
        );
        if !j.examples.is_empty() {
            line.push_str(": ");
            line.push_str(&j.examples.join("; "));
        }
        format!("<li>{}</li>", escape(&line))
    };
    let mut out = format!(
        "<p class=\"excluded\">History oracle (instant {} ns on the history's clock{}):</p><ul class=\"excluded\">",
        o.instant_ns,
        if o.moved_submits > 0 {
            format!(", {} submit times moved by the schedule", o.moved_submits)
        } else {
            String::new()
        }
    );
    out.push_str(&one("truth", &o.truth));
    if let Some(b) = &o.backup {
        out.push_str(&one("backup", b));
    }
    out.push_str("</ul>");
    out
}

fn excluded_note(g: &GenerationRecord) -> String {
    if g.excluded.is_empty() {
        return String::new();
    }
    let items: Vec<String> = g
        .excluded
        .iter()
        .map(|e| {
            format!(
                "{}–{}: {}",
                e.start,
                e.end.saturating_sub(1),
                escape(&e.reason)
            )
        })
        .collect();
    format!("<p class=\"excl\">excluded: {}</p>", items.join("; "))
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}\
header{display:flex;align-items:center;gap:1em}h1{margin:0}\
.verdict{color:#fff;padding:.2em .7em;border-radius:4px;font-weight:bold}\
.reasons li{color:#a01020}code{font:12px ui-monospace,monospace}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}\
.facts th{background:#f6f6f6;font-weight:normal;color:#555}.counts .zero{color:#aaa}\
.sw{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:-1px;border:1px solid #9993}\
.map .scroll{overflow:auto;max-height:70vh;border:1px solid #ddd;background:#fafafa}\
.map canvas{image-rendering:pixelated;image-rendering:crisp-edges;display:block;cursor:crosshair}\
.bar button{margin-right:2px}.hover{margin-left:1em;font:12px ui-monospace,monospace}\
.worst td{font-size:12px}.excl{color:#666;font-size:12px}footer{margin-top:2em;color:#666}";

const JS: &str = r#"
function decode(m){const n=m.blocks,out=new Uint8Array(n);
 if(m.data.rle){let i=0;for(const [c,k] of m.data.rle){out.fill(c,i,i+k);i+=k;}}
 else{const s=atob(m.data.b64);for(let i=0;i<n;i++)out[i]=s.charCodeAt(i);}return out;}
function cols(n){return n>=262144?1024:n>=4096?512:Math.max(1,Math.ceil(Math.sqrt(n)));}
const RGB=CLASSES.map(c=>[1,3,5].map(i=>parseInt(c[1].substr(i,2),16)));
MAPS.forEach((m,i)=>{
 const codes=decode(m),w=cols(m.blocks),h=Math.ceil(m.blocks/w),cv=document.getElementById('map'+i);
 cv.width=w;cv.height=h;const ctx=cv.getContext('2d'),img=ctx.createImageData(w,h);
 for(let b=0;b<m.blocks;b++){const c=RGB[codes[b]]||[255,0,255];img.data.set([c[0],c[1],c[2],255],b*4);}
 for(let b=m.blocks;b<w*h;b++)img.data.set([255,255,255,255],b*4);
 ctx.putImageData(img,0,0);
 let cell=Math.max(1,Math.floor(1024/w));
 const size=()=>{cv.style.width=(w*cell)+'px';cv.style.height=(h*cell)+'px';};size();
 document.querySelectorAll('button[data-map="'+i+'"]').forEach(bt=>bt.onclick=()=>{cell=+bt.dataset.cell;size();});
 const out=document.getElementById('hover'+i);
 cv.onmousemove=e=>{const x=Math.floor(e.offsetX/cell),y=Math.floor(e.offsetY/cell),b=y*w+x;
  if(x>=w||b>=m.blocks){out.textContent='';return;}
  const d=m.details[b];let t='block '+b+' ('+(b*4096).toString(16)+'h): '+CLASSES[codes[b]][0];
  if(d){t+=' — '+d[0];if(d[1])t+=' — '+d[1];if(d[2])t+=' — '+d[2];}out.textContent=t;};
});
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
    }

    #[test]
    fn clean_maps_encode_to_a_few_bytes_and_noisy_ones_to_base64() {
        let clean = vec![BlockClass::Ok; 131072];
        assert_eq!(encode_classes(&clean), "{\"rle\":[[0,131072]]}");
        let noisy: Vec<BlockClass> = (0..1000)
            .map(|i| {
                if i % 2 == 0 {
                    BlockClass::Ok
                } else {
                    BlockClass::DataFromTheFuture
                }
            })
            .collect();
        assert!(encode_classes(&noisy).starts_with("{\"b64\":"));
    }

    #[test]
    fn script_json_cannot_close_the_script() {
        let v = serde_json::json!({"x": "</script><script>alert(1)"});
        assert!(!script_json(&v).contains("</script"));
    }
}
