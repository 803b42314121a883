//! Cell cgroups (placeholder; being written).
