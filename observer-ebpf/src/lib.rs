#![no_std]
// This file exists to enable the library target (needed by observer's build dependency).
