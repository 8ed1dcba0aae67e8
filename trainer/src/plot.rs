//! Learning-curve PNGs (plotters, bitmap backend): [`learning_curve`], the single run
//! `trainer train` draws, and [`learning_curves`], several runs per task with a legend
//! for `trainer results`.
//!
//! plotters is built without its font features (they need system fonts and font-kit).
//! [`learning_curve`] carries no text: the x axis is env steps from 0 to the run's
//! budget, the y axis spans the returns seen (the range is printed in the progress line
//! and is in metrics.csv); blue is the evaluation mean with a ±std band, grey the mean
//! training episode return. [`learning_curves`] writes its titles, tick labels and legend
//! with a built-in 5×8 bitmap font ([`draw_text`]).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One point of the curve.
pub struct CurvePoint {
    pub step: f64,
    pub eval_mean: f64,
    pub eval_std: f64,
    /// Mean return of recent training episodes (NaN when none finished yet).
    pub train_mean: f64,
}

pub fn learning_curve(path: &Path, points: &[CurvePoint], max_step: f64) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let values = points
        .iter()
        .flat_map(|p| {
            [
                p.eval_mean - p.eval_std,
                p.eval_mean + p.eval_std,
                p.train_mean,
            ]
        })
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        let pad = 0.05 * (hi - lo);
        (lo - pad, hi + pad)
    } else if lo.is_finite() {
        (lo - 1.0, lo + 1.0)
    } else {
        (0.0, 1.0)
    };
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .build_cartesian_2d(0.0..max_step.max(1.0), lo..hi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_y_mesh()
        .x_labels(0)
        .y_labels(0)
        .draw()
        .map_err(|e| err(&e))?;
    // Axes (left, bottom), zero line and a light grid at tenths of the budget.
    chart
        .draw_series(LineSeries::new(
            [(0.0, hi), (0.0, lo), (max_step, lo)],
            BLACK.stroke_width(2),
        ))
        .map_err(|e| err(&e))?;
    for k in 1..10 {
        let x = max_step * k as f64 / 10.0;
        chart
            .draw_series(LineSeries::new([(x, lo), (x, hi)], RGBColor(235, 235, 235)))
            .map_err(|e| err(&e))?;
    }
    if lo < 0.0 && hi > 0.0 {
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (max_step, 0.0)],
                RGBColor(180, 180, 180),
            ))
            .map_err(|e| err(&e))?;
    }
    if points.len() > 1 {
        let band: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.step, p.eval_mean + p.eval_std))
            .chain(
                points
                    .iter()
                    .rev()
                    .map(|p| (p.step, p.eval_mean - p.eval_std)),
            )
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(
                band,
                RGBColor(30, 100, 220).mix(0.2).filled(),
            )))
            .map_err(|e| err(&e))?;
    }
    let train: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.train_mean.is_finite())
        .map(|p| (p.step, p.train_mean))
        .collect();
    chart
        .draw_series(LineSeries::new(
            train,
            RGBColor(150, 150, 150).stroke_width(2),
        ))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.step, p.eval_mean)),
            RGBColor(30, 100, 220).stroke_width(3),
        ))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(
            points
                .iter()
                .map(|p| Circle::new((p.step, p.eval_mean), 4, RGBColor(30, 100, 220).filled())),
        )
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// How a series of [`learning_curves`] is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesStyle {
    /// A measured curve: solid line with filled markers.
    Measured,
    /// Reference numbers (the paper's): dashed line with hollow markers.
    Reference,
}

/// One labelled line of a [`Panel`].
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub color: (u8, u8, u8),
    pub style: SeriesStyle,
    /// (env steps, return), in step order.
    pub points: Vec<(f64, f64)>,
}

/// One chart of [`learning_curves`]: a title (e.g. the task) and its series.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

const PANEL_W: u32 = 960;
const PANEL_H: u32 = 520;
const MARGIN_LEFT: u32 = 90;
const MARGIN_RIGHT: u32 = 330;
const MARGIN_TOP: u32 = 44;
const MARGIN_BOTTOM: u32 = 44;
/// Legend labels longer than this lose their middle (they must fit the right margin).
const LEGEND_CHARS: usize = 22;

/// Several learning curves per chart, one chart per panel (a grid, two panels a row),
/// each with its title, labelled axes and a legend. Text is drawn with the built-in
/// 5×8 bitmap font below ([`draw_text`]), since plotters is built without fonts.
pub fn learning_curves(path: &Path, panels: &[Panel]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let cols = if panels.len() > 1 { 2 } else { 1 };
    let rows = panels.len().div_ceil(cols).max(1);
    let root = BitMapBackend::new(path, (PANEL_W * cols as u32, PANEL_H * rows as u32))
        .into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
        draw_panel(&root, area, panel).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_panel(root: &Area<'_>, area: &Area<'_>, panel: &Panel) -> Result<()> {
    let e = |e: &dyn std::fmt::Display| anyhow!("{e}");
    let (x0, y0) = area.get_base_pixel();
    let points = || panel.series.iter().flat_map(|s| s.points.iter());
    let x_max = points().map(|p| p.0).fold(0.0, f64::max).max(1.0) * 1.03;
    let (lo, hi) = points()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        let pad = 0.06 * (hi - lo);
        (lo - pad, hi + pad)
    } else if lo.is_finite() {
        (lo - 1.0, lo + 1.0)
    } else {
        (0.0, 1.0)
    };
    draw_text(root, (x0 + 20, y0 + 12), &panel.title, BLACK, 2)?;
    let mut chart = ChartBuilder::on(area)
        .margin_left(MARGIN_LEFT)
        .margin_right(MARGIN_RIGHT)
        .margin_top(MARGIN_TOP)
        .margin_bottom(MARGIN_BOTTOM)
        .build_cartesian_2d(0.0..x_max, lo..hi)
        .map_err(|x| e(&x))?;
    let grey = RGBColor(225, 225, 225);
    for x in nice_ticks(0.0, x_max, 6) {
        chart
            .draw_series(LineSeries::new([(x, lo), (x, hi)], grey))
            .map_err(|x| e(&x))?;
        let label = fmt_steps(x);
        let (px, py) = chart.backend_coord(&(x, lo));
        let w = text_width(&label, 2);
        draw_text(root, (px - w / 2, py + 8), &label, BLACK, 2)?;
    }
    for y in nice_ticks(lo, hi, 6) {
        chart
            .draw_series(LineSeries::new([(0.0, y), (x_max, y)], grey))
            .map_err(|x| e(&x))?;
        let label = fmt_value(y, nice_step(lo, hi, 6));
        let (px, py) = chart.backend_coord(&(0.0, y));
        let w = text_width(&label, 2);
        draw_text(root, (px - w - 8, py - 7), &label, BLACK, 2)?;
    }
    if lo < 0.0 && hi > 0.0 {
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (x_max, 0.0)],
                RGBColor(150, 150, 150),
            ))
            .map_err(|x| e(&x))?;
    }
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(0.0, lo), (x_max, hi)],
            BLACK.stroke_width(1),
        )))
        .map_err(|x| e(&x))?;
    let (_, bottom) = chart.backend_coord(&(0.0, lo));
    let (right, top) = chart.backend_coord(&(x_max, hi));
    let axis = "env steps";
    draw_text(
        root,
        (right - text_width(axis, 2), bottom + 28),
        axis,
        RGBColor(90, 90, 90),
        2,
    )?;
    if panel.series.iter().all(|s| s.points.is_empty()) {
        draw_text(
            root,
            (x0 + MARGIN_LEFT as i32 + 20, top + 20),
            "no evaluation yet",
            RGBColor(90, 90, 90),
            2,
        )?;
    }
    for s in &panel.series {
        let color = RGBColor(s.color.0, s.color.1, s.color.2);
        let pts = s.points.iter().copied().filter(|p| p.1.is_finite());
        match s.style {
            SeriesStyle::Measured => {
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(|x| e(&x))?;
                chart
                    .draw_series(pts.map(|p| Circle::new(p, 3, color.filled())))
                    .map_err(|x| e(&x))?;
            }
            SeriesStyle::Reference => {
                chart
                    .draw_series(DashedLineSeries::new(
                        pts.clone(),
                        8,
                        6,
                        color.stroke_width(2),
                    ))
                    .map_err(|x| e(&x))?;
                chart
                    .draw_series(pts.map(|p| Circle::new(p, 5, color.stroke_width(2))))
                    .map_err(|x| e(&x))?;
            }
        }
    }
    // Legend, right of the plot.
    let lx = right + 16;
    for (i, s) in panel.series.iter().enumerate() {
        let y = top + 6 + 24 * i as i32;
        let color = RGBColor(s.color.0, s.color.1, s.color.2);
        let line = [(lx, y + 7), (lx + 28, y + 7)];
        match s.style {
            SeriesStyle::Measured => {
                root.draw(&PathElement::new(line, color.stroke_width(3)))
                    .map_err(|x| e(&x))?;
                root.draw(&Circle::new((lx + 14, y + 7), 3, color.filled()))
                    .map_err(|x| e(&x))?;
            }
            SeriesStyle::Reference => {
                root.draw(&PathElement::new(
                    [(lx, y + 7), (lx + 10, y + 7)],
                    color.stroke_width(2),
                ))
                .map_err(|x| e(&x))?;
                root.draw(&PathElement::new(
                    [(lx + 18, y + 7), (lx + 28, y + 7)],
                    color.stroke_width(2),
                ))
                .map_err(|x| e(&x))?;
                root.draw(&Circle::new((lx + 14, y + 7), 4, color.stroke_width(2)))
                    .map_err(|x| e(&x))?;
            }
        }
        let label = shorten(&s.label, LEGEND_CHARS);
        draw_text(root, (lx + 36, y), &label, BLACK, 2)?;
    }
    Ok(())
}

/// `text` cut to `max` characters by replacing its middle with '~' (the ends of a
/// label, e.g. algorithm and run directory, tell runs apart).
fn shorten(text: &str, max: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max || max < 3 {
        return chars.into_iter().take(max).collect();
    }
    let head = (max - 1) / 2;
    let tail = max - 1 - head;
    let mut out: String = chars[..head].iter().collect();
    out.push('~');
    out.extend(&chars[chars.len() - tail..]);
    out
}

/// The tick spacing [`nice_ticks`] uses: 1, 2 or 5 times a power of ten.
fn nice_step(lo: f64, hi: f64, target: usize) -> f64 {
    let raw = ((hi - lo) / target.max(1) as f64).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// About `target` round values in [lo, hi].
fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite() && hi > lo) {
        return Vec::new();
    }
    let step = nice_step(lo, hi, target);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Env steps as tick labels: 0, 500, 2.5k, 250k, 1M, 1.5M.
pub fn fmt_steps(x: f64) -> String {
    let trim = |v: f64| {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if x.abs() >= 1e6 {
        format!("{}M", trim(x / 1e6))
    } else if x.abs() >= 1e3 {
        format!("{}k", trim(x / 1e3))
    } else {
        trim(x)
    }
}

fn fmt_value(y: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    let s = format!("{y:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// Width in pixels of `text` drawn by [`draw_text`] at `scale`.
pub fn text_width(text: &str, scale: i32) -> i32 {
    (text.chars().count() as i32 * 6 - 1).max(0) * scale
}

/// Draws `text` with its top-left corner at `at` (pixels of `area`) in a 5×8 bitmap
/// font, each font pixel a `scale`×`scale` square. Characters outside printable ASCII
/// are drawn as '?'.
pub fn draw_text<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    at: (i32, i32),
    text: &str,
    color: RGBColor,
    scale: i32,
) -> Result<()> {
    let s = scale.max(1);
    for (i, c) in text.chars().enumerate() {
        let code = if (' '..='~').contains(&c) { c } else { '?' } as usize - 32;
        let x = at.0 + i as i32 * 6 * s;
        for (col, bits) in FONT_5X8[code].iter().enumerate() {
            for row in 0..8 {
                if bits >> row & 1 == 1 {
                    let (px, py) = (x + col as i32 * s, at.1 + row * s);
                    area.draw(&Rectangle::new(
                        [(px, py), (px + s - 1, py + s - 1)],
                        color.filled(),
                    ))
                    .map_err(|e| anyhow!("drawing text: {e}"))?;
                }
            }
        }
    }
    Ok(())
}

/// The classic 5×8 LCD font for ASCII 32..=126: five columns per glyph, bit 0 the top row.
#[rustfmt::skip]
const FONT_5X8: [[u8; 5]; 95] = [
    [0x00, 0x00, 0x00, 0x00, 0x00], [0x00, 0x00, 0x5F, 0x00, 0x00], // ' ' !
    [0x00, 0x07, 0x00, 0x07, 0x00], [0x14, 0x7F, 0x14, 0x7F, 0x14], // " #
    [0x24, 0x2A, 0x7F, 0x2A, 0x12], [0x23, 0x13, 0x08, 0x64, 0x62], // $ %
    [0x36, 0x49, 0x56, 0x20, 0x50], [0x00, 0x08, 0x07, 0x03, 0x00], // & '
    [0x00, 0x1C, 0x22, 0x41, 0x00], [0x00, 0x41, 0x22, 0x1C, 0x00], // ( )
    [0x2A, 0x1C, 0x7F, 0x1C, 0x2A], [0x08, 0x08, 0x3E, 0x08, 0x08], // * +
    [0x00, 0x80, 0x70, 0x30, 0x00], [0x08, 0x08, 0x08, 0x08, 0x08], // , -
    [0x00, 0x00, 0x60, 0x60, 0x00], [0x20, 0x10, 0x08, 0x04, 0x02], // . /
    [0x3E, 0x51, 0x49, 0x45, 0x3E], [0x00, 0x42, 0x7F, 0x40, 0x00], // 0 1
    [0x72, 0x49, 0x49, 0x49, 0x46], [0x21, 0x41, 0x49, 0x4D, 0x33], // 2 3
    [0x18, 0x14, 0x12, 0x7F, 0x10], [0x27, 0x45, 0x45, 0x45, 0x39], // 4 5
    [0x3C, 0x4A, 0x49, 0x49, 0x31], [0x41, 0x21, 0x11, 0x09, 0x07], // 6 7
    [0x36, 0x49, 0x49, 0x49, 0x36], [0x46, 0x49, 0x49, 0x29, 0x1E], // 8 9
    [0x00, 0x00, 0x14, 0x00, 0x00], [0x00, 0x40, 0x34, 0x00, 0x00], // : ;
    [0x00, 0x08, 0x14, 0x22, 0x41], [0x14, 0x14, 0x14, 0x14, 0x14], // < =
    [0x00, 0x41, 0x22, 0x14, 0x08], [0x02, 0x01, 0x59, 0x09, 0x06], // > ?
    [0x3E, 0x41, 0x5D, 0x59, 0x4E], [0x7C, 0x12, 0x11, 0x12, 0x7C], // @ A
    [0x7F, 0x49, 0x49, 0x49, 0x36], [0x3E, 0x41, 0x41, 0x41, 0x22], // B C
    [0x7F, 0x41, 0x41, 0x41, 0x3E], [0x7F, 0x49, 0x49, 0x49, 0x41], // D E
    [0x7F, 0x09, 0x09, 0x09, 0x01], [0x3E, 0x41, 0x41, 0x51, 0x73], // F G
    [0x7F, 0x08, 0x08, 0x08, 0x7F], [0x00, 0x41, 0x7F, 0x41, 0x00], // H I
    [0x20, 0x40, 0x41, 0x3F, 0x01], [0x7F, 0x08, 0x14, 0x22, 0x41], // J K
    [0x7F, 0x40, 0x40, 0x40, 0x40], [0x7F, 0x02, 0x1C, 0x02, 0x7F], // L M
    [0x7F, 0x04, 0x08, 0x10, 0x7F], [0x3E, 0x41, 0x41, 0x41, 0x3E], // N O
    [0x7F, 0x09, 0x09, 0x09, 0x06], [0x3E, 0x41, 0x51, 0x21, 0x5E], // P Q
    [0x7F, 0x09, 0x19, 0x29, 0x46], [0x26, 0x49, 0x49, 0x49, 0x32], // R S
    [0x03, 0x01, 0x7F, 0x01, 0x03], [0x3F, 0x40, 0x40, 0x40, 0x3F], // T U
    [0x1F, 0x20, 0x40, 0x20, 0x1F], [0x3F, 0x40, 0x38, 0x40, 0x3F], // V W
    [0x63, 0x14, 0x08, 0x14, 0x63], [0x03, 0x04, 0x78, 0x04, 0x03], // X Y
    [0x61, 0x59, 0x49, 0x4D, 0x43], [0x00, 0x7F, 0x41, 0x41, 0x41], // Z [
    [0x02, 0x04, 0x08, 0x10, 0x20], [0x00, 0x41, 0x41, 0x41, 0x7F], // \ ]
    [0x04, 0x02, 0x01, 0x02, 0x04], [0x40, 0x40, 0x40, 0x40, 0x40], // ^ _
    [0x00, 0x03, 0x07, 0x08, 0x00], [0x20, 0x54, 0x54, 0x78, 0x40], // ` a
    [0x7F, 0x28, 0x44, 0x44, 0x38], [0x38, 0x44, 0x44, 0x44, 0x28], // b c
    [0x38, 0x44, 0x44, 0x28, 0x7F], [0x38, 0x54, 0x54, 0x54, 0x18], // d e
    [0x00, 0x08, 0x7E, 0x09, 0x02], [0x18, 0xA4, 0xA4, 0x9C, 0x78], // f g
    [0x7F, 0x08, 0x04, 0x04, 0x78], [0x00, 0x44, 0x7D, 0x40, 0x00], // h i
    [0x20, 0x40, 0x40, 0x3D, 0x00], [0x7F, 0x10, 0x28, 0x44, 0x00], // j k
    [0x00, 0x41, 0x7F, 0x40, 0x00], [0x7C, 0x04, 0x78, 0x04, 0x78], // l m
    [0x7C, 0x08, 0x04, 0x04, 0x78], [0x38, 0x44, 0x44, 0x44, 0x38], // n o
    [0xFC, 0x18, 0x24, 0x24, 0x18], [0x18, 0x24, 0x24, 0x18, 0xFC], // p q
    [0x7C, 0x08, 0x04, 0x04, 0x08], [0x48, 0x54, 0x54, 0x54, 0x24], // r s
    [0x04, 0x04, 0x3F, 0x44, 0x24], [0x3C, 0x40, 0x40, 0x20, 0x7C], // t u
    [0x1C, 0x20, 0x40, 0x20, 0x1C], [0x3C, 0x40, 0x30, 0x40, 0x3C], // v w
    [0x44, 0x28, 0x10, 0x28, 0x44], [0x4C, 0x90, 0x90, 0x90, 0x7C], // x y
    [0x44, 0x64, 0x54, 0x4C, 0x44], [0x00, 0x08, 0x36, 0x41, 0x00], // z {
    [0x00, 0x00, 0x77, 0x00, 0x00], [0x00, 0x41, 0x36, 0x08, 0x00], // | }
    [0x02, 0x01, 0x02, 0x04, 0x02],                                 // ~
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(
            nice_ticks(0.0, 1_030_000.0, 6),
            [0.0, 200e3, 400e3, 600e3, 800e3, 1e6]
        );
        assert_eq!(
            nice_ticks(-130.0, 1070.0, 6),
            [-0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]
        );
        assert!(nice_ticks(1.0, 1.0, 6).is_empty());
        assert_eq!(fmt_steps(250_000.0), "250k");
        assert_eq!(fmt_steps(1_500_000.0), "1.5M");
        assert_eq!(fmt_steps(1100.0), "1.1k");
        assert_eq!(fmt_steps(0.0), "0");
        assert_eq!(fmt_value(-0.0, 200.0), "0");
        assert_eq!(fmt_value(0.25, 0.05), "0.25");
        assert_eq!(shorten("sac s0", 24), "sac s0");
        assert_eq!(
            shorten("sac s0 flame-train-killed-25999", 24)
                .chars()
                .count(),
            24
        );
        assert_eq!(shorten("abcdefghij", 5), "ab~ij");
    }

    #[test]
    fn multi_series_png_is_written() {
        let path = std::env::temp_dir().join(format!("flame-plot-{}.png", std::process::id()));
        let series = |label: &str, style, k: f64| Series {
            label: label.into(),
            color: (30, 100, 220),
            style,
            points: (0..5).map(|i| (i as f64 * 1e4, k * i as f64)).collect(),
        };
        let panels = [
            Panel {
                title: "HalfCheetah-v5".into(),
                series: vec![
                    series("flame-m s0", SeriesStyle::Measured, 100.0),
                    series("SAC (paper)", SeriesStyle::Reference, 200.0),
                ],
            },
            Panel {
                title: "Hopper-v5".into(),
                series: vec![],
            },
            Panel {
                title: "Ant-v5".into(),
                series: vec![series("sac s1", SeriesStyle::Measured, -3.0)],
            },
        ];
        learning_curves(&path, &panels).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let _ = std::fs::remove_file(&path);
    }
}
