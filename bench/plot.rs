//! Line charts of 1-second series (or, [`write_xy`], of one measure against
//! another), PNG and SVG, with plotters. Text needs a
//! TrueType font: the first of a few common system paths is registered
//! (Debian: fonts-dejavu-core). Without one, plots are skipped with a note.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a font for "sans-serif"; false when none was found.
pub fn init_font() -> bool {
    for p in FONTS {
        if let Ok(bytes) = std::fs::read(p) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// One line: (seconds, value) points, a colour index, and a legend label
/// (None for later rounds of an already labelled contender).
pub struct Line {
    pub label: Option<String>,
    pub color: usize,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub lines: Vec<Line>,
}

/// How the x axis reads.
struct XAxis<'a> {
    desc: &'a str,
    /// Tick labels in thousands ("200k"), for rates.
    thousands: bool,
    /// A dot on every point: few points, each a separate measurement.
    markers: bool,
}

const SECONDS: XAxis = XAxis {
    desc: "seconds into the run",
    thousands: false,
    markers: false,
};

/// Writes `base.png` and `base.svg` with the panels stacked vertically.
pub fn write(base: &Path, panels: &[Panel]) -> anyhow::Result<()> {
    write_with(base, panels, &SECONDS)
}

/// Like [`write`], points being (rate, value) measurements: `x_desc` under
/// the x axis, its ticks in thousands, a dot on every point.
pub fn write_xy(base: &Path, x_desc: &str, panels: &[Panel]) -> anyhow::Result<()> {
    let x = XAxis {
        desc: x_desc,
        thousands: true,
        markers: true,
    };
    write_with(base, panels, &x)
}

fn write_with(base: &Path, panels: &[Panel], x: &XAxis) -> anyhow::Result<()> {
    let h = 360 * panels.len() as u32;
    let png = base.with_extension("png");
    let svg = base.with_extension("svg");
    draw(
        BitMapBackend::new(&png, (900, h)).into_drawing_area(),
        panels,
        x,
    )?;
    draw(
        SVGBackend::new(&svg, (900, h)).into_drawing_area(),
        panels,
        x,
    )?;
    Ok(())
}

/// Tick labels with as many decimals as a y range up to `ymax` needs.
fn decimals(ymax: f64) -> usize {
    if ymax < 1.0 {
        2
    } else if ymax < 10.0 {
        1
    } else {
        0
    }
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    C[i % C.len()]
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[Panel],
    x: &XAxis,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("plot: {e:?}");
    root.fill(&WHITE).map_err(e)?;
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (area, p) in areas.iter().zip(panels) {
        let xmax = p
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|q| q.0))
            .fold(1.0f64, f64::max);
        let ymax = p
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|q| q.1))
            .fold(if x.markers { 0.5 } else { 10.0 }, f64::max)
            * 1.1;
        let dec = decimals(ymax);
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(e)?;
        let y_fmt = |v: &f64| format!("{v:.dec$}");
        let k_fmt = |v: &f64| format!("{:.0}k", v / 1000.0);
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(TRANSPARENT)
            .x_desc(x.desc)
            .y_desc(p.y_label.as_str())
            .y_label_formatter(&y_fmt);
        if x.thousands {
            mesh.x_label_formatter(&k_fmt);
        }
        mesh.draw().map_err(e)?;
        for l in &p.lines {
            let c = color(l.color);
            let style = c.stroke_width(2);
            let pts = l.points.iter().copied();
            if x.markers {
                chart
                    .draw_series(l.points.iter().map(|&q| Circle::new(q, 4, c.filled())))
                    .map_err(e)?;
            }
            let anno = if l.dashed {
                chart
                    .draw_series(DashedLineSeries::new(pts, 6, 4, style))
                    .map_err(e)?
            } else {
                chart.draw_series(LineSeries::new(pts, style)).map_err(e)?
            };
            if let Some(label) = &l.label {
                anno.label(label.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            }
        }
        chart
            .configure_series_labels()
            .position(if x.markers {
                SeriesLabelPosition::MiddleRight
            } else {
                SeriesLabelPosition::UpperRight
            })
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_decimals_follow_the_range() {
        assert_eq!(decimals(0.3), 2);
        assert_eq!(decimals(5.5), 1);
        assert_eq!(decimals(110.0), 0);
    }
}
