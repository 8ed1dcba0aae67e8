//! The learning-curve PNG (plotters, bitmap backend).
//!
//! plotters is built without its font features (they need system fonts and font-kit),
//! so the picture carries no text: the x axis is env steps from 0 to the run's budget,
//! the y axis spans the returns seen (the range is printed in the progress line and is
//! in metrics.csv); blue is the evaluation mean with a ±std band, grey the mean training
//! episode return.

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
