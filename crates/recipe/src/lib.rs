//! Greengrass V2 component recipes: parse, validate, select a manifest, interpolate.
