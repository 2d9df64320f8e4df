//! `loss.png`: training and validation loss against step.

use crate::io::read_jsonl as read_records;
use crate::{Error, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: Once = Once::new();

pub(crate) fn register_font() {
    FONT.call_once(|| {
        // plotters draws text only with a registered font; embed DejaVu so no system font is needed.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// Draws the `loss` (train) and `val_loss` records of `metrics` into `png`, atomically.
pub fn plot_losses(metrics: &Path, png: &Path) -> Result<()> {
    let records = read_records(metrics)?;
    let series = |key: &str| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
            .filter(|(_, y)| y.is_finite())
            .collect()
    };
    let train = series("loss");
    let val = series("val_loss");
    if train.is_empty() && val.is_empty() {
        return Ok(());
    }
    register_font();
    let all: Vec<&(f64, f64)> = train.iter().chain(val.iter()).collect();
    let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_min = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_max = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let tmp = png.with_extension("tmp.png");
    let err = |e: &dyn std::fmt::Display| Error::format(png, format!("cannot draw plot: {e}"));
    {
        let root = BitMapBackend::new(&tmp, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("loss", ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, (y_min - pad)..(y_max + pad))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("cross-entropy (nats/token)")
            .draw()
            .map_err(|e| err(&e))?;
        if !train.is_empty() {
            chart
                .draw_series(LineSeries::new(train.iter().copied(), &BLUE))
                .map_err(|e| err(&e))?
                .label("train")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        }
        if !val.is_empty() {
            chart
                .draw_series(LineSeries::new(val.iter().copied(), RED.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label("validation")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
            chart
                .draw_series(val.iter().map(|p| Circle::new(*p, 3, RED.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    std::fs::rename(&tmp, png).map_err(|e| Error::io(png, e))
}

/// Draws a confusion matrix (`matrix[true][predicted]` counts) into `png`, atomically: cells
/// shaded by the share of their true class, counts written in them.
pub fn plot_confusion(
    matrix: &[Vec<usize>],
    classes: &[String],
    title: &str,
    png: &Path,
) -> Result<()> {
    let n = matrix.len();
    if n == 0 {
        return Err(Error::Data("an empty confusion matrix".into()));
    }
    register_font();
    let cell = 56i32;
    let left = 150i32;
    let top = 60i32;
    let bottom = 150i32;
    let size = (
        (left + cell * n as i32 + 20) as u32,
        (top + cell * n as i32 + bottom) as u32,
    );
    let tmp = png.with_extension("tmp.png");
    let err = |e: &dyn std::fmt::Display| Error::format(png, format!("cannot draw plot: {e}"));
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let text = |px: i32| ("sans-serif", px).into_text_style(&root).color(&BLACK);
        root.draw_text(title, &text(20), (10, 15))
            .map_err(|e| err(&e))?;
        for (i, row) in matrix.iter().enumerate() {
            let total = row.iter().sum::<usize>().max(1) as f64;
            for (j, &count) in row.iter().enumerate() {
                let share = count as f64 / total;
                let shade = (255.0 * (1.0 - share)) as u8;
                let (x0, y0) = (left + cell * j as i32, top + cell * i as i32);
                let color = if i == j {
                    RGBColor(shade, shade, 255)
                } else {
                    RGBColor(255, shade, shade)
                };
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell, y0 + cell)],
                    color.filled(),
                ))
                .map_err(|e| err(&e))?;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell, y0 + cell)],
                    RGBColor(200, 200, 200),
                ))
                .map_err(|e| err(&e))?;
                let s = count.to_string();
                let fg = if share > 0.6 { WHITE } else { BLACK };
                root.draw_text(
                    &s,
                    &("sans-serif", 14).into_text_style(&root).color(&fg),
                    (x0 + 6, y0 + cell / 2 - 7),
                )
                .map_err(|e| err(&e))?;
            }
        }
        for (i, name) in classes.iter().enumerate().take(n) {
            let short: String = name.chars().take(16).collect();
            root.draw_text(&short, &text(13), (8, top + cell * i as i32 + cell / 2 - 7))
                .map_err(|e| err(&e))?;
            let style = ("sans-serif", 13)
                .into_font()
                .transform(FontTransform::Rotate90)
                .color(&BLACK);
            root.draw_text(
                &short,
                &style,
                (
                    left + cell * i as i32 + cell / 2 + 6,
                    top + cell * n as i32 + 6,
                ),
            )
            .map_err(|e| err(&e))?;
        }
        let axis = "rows: true class, columns: predicted";
        root.draw_text(axis, &text(14), (left, top - 22))
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    std::fs::rename(&tmp, png).map_err(|e| Error::io(png, e))
}

/// One line of [`plot_against_shots`]: points `(k, mean, sd)`.
pub struct ShotSeries {
    pub name: String,
    pub points: Vec<(f64, f64, f64)>,
}

/// Draws accuracy against the number of shots into `png`, atomically: a line per series,
/// with ±sd bars where the sd is positive, and chance level dashed when given.
pub fn plot_against_shots(
    series: &[ShotSeries],
    title: &str,
    x_desc: &str,
    chance: Option<f64>,
    png: &Path,
) -> Result<()> {
    let all: Vec<&(f64, f64, f64)> = series.iter().flat_map(|s| &s.points).collect();
    if all.is_empty() {
        return Err(Error::Data("nothing to plot".into()));
    }
    register_font();
    let x_min = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let x_pad = ((x_max - x_min) * 0.05).max(0.5);
    let lo = all
        .iter()
        .map(|p| p.1 - p.2)
        .chain(chance)
        .fold(1.0, f64::min);
    let hi = all
        .iter()
        .map(|p| p.1 + p.2)
        .chain(chance)
        .fold(0.0, f64::max);
    let pad = ((hi - lo) * 0.08).max(0.02);
    let (y0, y1) = ((lo - pad).max(0.0), (hi + pad).min(1.0));
    let tmp = png.with_extension("tmp.png");
    let err = |e: &dyn std::fmt::Display| Error::format(png, format!("cannot draw plot: {e}"));
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    {
        let root = BitMapBackend::new(&tmp, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((x_min - x_pad)..(x_max + x_pad), y0..y1)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("accuracy")
            .y_label_formatter(&|y| format!("{y:.2}"))
            .draw()
            .map_err(|e| err(&e))?;
        if let Some(c) = chance {
            chart
                .draw_series(DashedLineSeries::new(
                    [(x_min - x_pad, c), (x_max + x_pad, c)],
                    6,
                    4,
                    RGBColor(120, 120, 120).into(),
                ))
                .map_err(|e| err(&e))?
                .label("chance")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(120, 120, 120))
                });
        }
        for (s, color) in series.iter().zip(colors.iter().cycle()) {
            let color = *color;
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().map(|p| (p.0, p.1)),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(&e))?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|p| Circle::new((p.0, p.1), 4, color.filled())),
                )
                .map_err(|e| err(&e))?;
            chart
                .draw_series(s.points.iter().filter(|p| p.2 > 0.0).map(|p| {
                    ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, color.stroke_width(1), 8)
                }))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    std::fs::rename(&tmp, png).map_err(|e| Error::io(png, e))
}
