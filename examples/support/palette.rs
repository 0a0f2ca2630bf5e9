//! The examples' plot colours.

use plotters::style::RGBColor;

/// Distinguishable on white and in greyscale (matplotlib's palette, darkened).
pub const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 96, 0),
    RGBColor(34, 139, 34),
    RGBColor(200, 30, 40),
    RGBColor(110, 70, 160),
    RGBColor(140, 86, 75),
    RGBColor(200, 80, 170),
    RGBColor(90, 90, 90),
];
