//! A latency-by-percentile plot as a standalone SVG (log scale on the percentile axis,
//! like HdrHistogram's plots).

use hdrhistogram::Histogram;

/// Renders latency (ms) against percentile, from 0 to 99.99 %.
pub fn latency_plot(h: &Histogram<u64>, title: &str) -> String {
    let (w, hgt, left, bottom, top, right) = (800.0, 420.0, 70.0, 50.0, 40.0, 20.0);
    let plot_w = w - left - right;
    let plot_h = hgt - top - bottom;
    // x = log10(1 / (1 - q)), q from 0 to 0.9999 => 0 .. 4.
    let max_x = 4.0f64;
    let points: Vec<(f64, f64)> = (0..=400)
        .map(|i| {
            let x = f64::from(i) / 100.0;
            let q = 1.0 - 10f64.powf(-x);
            let ms = if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            };
            (x, ms)
        })
        .collect();
    let max_ms = points.iter().map(|p| p.1).fold(0.1f64, f64::max) * 1.1;
    let sx = |x: f64| left + x / max_x * plot_w;
    let sy = |y: f64| top + plot_h - y / max_ms * plot_h;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{hgt}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>
"#,
        w / 2.0,
        escape(title)
    );
    for (x, label) in [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
    ] {
        svg += &format!(
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#ddd\"/><text x=\"{0}\" y=\"{3}\" text-anchor=\"middle\">{label}</text>\n",
            sx(x),
            top,
            top + plot_h,
            top + plot_h + 18.0
        );
    }
    for i in 0..=5 {
        let y = max_ms * f64::from(i) / 5.0;
        svg += &format!(
            "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#ddd\"/><text x=\"{2}\" y=\"{3}\" text-anchor=\"end\">{y:.2} ms</text>\n",
            sy(y),
            left + plot_w,
            left - 6.0,
            sy(y) + 4.0
        );
    }
    let path: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
        .collect();
    svg += &format!(
        "<polyline fill=\"none\" stroke=\"#c0392b\" stroke-width=\"2\" points=\"{}\"/>\n",
        path.join(" ")
    );
    svg += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text>\n</svg>\n",
        left + plot_w / 2.0,
        hgt - 8.0
    );
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
