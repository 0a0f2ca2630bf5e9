//! Which SIMD instruction set the CPU kernels use, decided at run time.

use std::fmt;

/// An instruction set the CPU kernels have a code path for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, vectorised by the compiler for the build target's baseline.
    Portable,
    /// x86-64 AVX2 with FMA3 (Haswell, Zen 1 and later).
    Avx2Fma,
    /// x86-64 AVX-512F (Skylake-X, Ice Lake, Zen 4 and later).
    Avx512,
    /// aarch64 Advanced SIMD (every 64-bit Arm core).
    Neon,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2Fma, Isa::Avx512, Isa::Neon];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether this CPU can run the instruction set.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Proof that the CPU supports an [`Isa`]: the only way to select a SIMD code path, so no
/// kernel can be asked to run instructions the CPU lacks. On AVX-512 it also says whether
/// bf16 products run on AVX512-BF16's `vdpbf16ps` (`bf16_dot`), which `RINGTRAIN_ISA=avx512`
/// turns off (`avx512-bf16` names the level with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Simd {
    isa: Isa,
    bf16_dot: bool,
}

impl Simd {
    /// The best instruction set this CPU supports. The environment variable
    /// `RINGTRAIN_ISA` (portable, avx2, avx512, avx512-bf16, neon) selects a lower one,
    /// for comparisons and to work around a broken path; a name the CPU cannot run is
    /// ignored with a warning on stderr.
    pub fn detect() -> Simd {
        let Ok(name) = std::env::var("RINGTRAIN_ISA") else {
            return Simd::best();
        };
        let bf16_dot = name.trim().eq_ignore_ascii_case(BF16_DOT_NAME);
        let wanted = if bf16_dot {
            Simd::new(Isa::Avx512).filter(|s| s.bf16_dot)
        } else {
            Isa::from_name(&name).and_then(|isa| Simd::new(isa).map(Simd::without_bf16_dot))
        };
        if let Some(simd) = wanted {
            return simd;
        }
        // A typo in a tuning variable should not pass silently, nor stop the program.
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            let why = match Isa::from_name(&name) {
                _ if bf16_dot => format!("this CPU cannot run {BF16_DOT_NAME}"),
                Some(isa) => format!("this CPU cannot run {isa}"),
                None => "expected portable, avx2, avx512, avx512-bf16 or neon".to_string(),
            };
            eprintln!("ringtrain: ignoring RINGTRAIN_ISA={name}: {why}");
        });
        Simd::best()
    }

    /// The best instruction set this CPU supports, ignoring the environment.
    pub fn best() -> Simd {
        [Isa::Avx512, Isa::Avx2Fma, Isa::Neon]
            .into_iter()
            .find_map(Simd::new)
            .unwrap_or(Simd::portable())
    }

    /// `isa`, if this CPU supports it, with `vdpbf16ps` for bf16 products when `isa` is
    /// AVX-512 and the CPU has AVX512-BF16.
    pub fn new(isa: Isa) -> Option<Simd> {
        isa.is_supported().then(|| Simd {
            isa,
            bf16_dot: isa == Isa::Avx512 && has_avx512_bf16(),
        })
    }

    pub fn portable() -> Simd {
        Simd {
            isa: Isa::Portable,
            bf16_dot: false,
        }
    }

    /// The same instruction set, with bf16 products computed in f32 FMAs on operands
    /// rounded while packing.
    pub fn without_bf16_dot(self) -> Simd {
        Simd {
            bf16_dot: false,
            ..self
        }
    }

    /// Every code path this CPU supports, the portable one first: each instruction set,
    /// and AVX-512 both with and without `vdpbf16ps` where the CPU has it.
    pub fn available() -> Vec<Simd> {
        let mut all = Vec::new();
        for simd in Isa::ALL.into_iter().filter_map(Simd::new) {
            if simd.bf16_dot {
                all.push(simd.without_bf16_dot());
            }
            all.push(simd);
        }
        all
    }

    pub fn isa(self) -> Isa {
        self.isa
    }

    /// Whether GEMMs with bf16 inputs run on AVX512-BF16's `vdpbf16ps`.
    pub fn bf16_dot(self) -> bool {
        self.bf16_dot
    }

    /// The path's name as `RINGTRAIN_ISA` takes it: the ISA's, or `avx512-bf16`.
    pub fn name(self) -> &'static str {
        if self.bf16_dot {
            BF16_DOT_NAME
        } else {
            self.isa.name()
        }
    }
}

/// `RINGTRAIN_ISA`'s name for AVX-512 with `vdpbf16ps`.
const BF16_DOT_NAME: &str = "avx512-bf16";

fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512bf16")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl fmt::Display for Simd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Defines `fn name(simd: Simd, args..)` whose body is compiled once per instruction set
/// and picked at run time. Bodies are plain loops over slices: with the target features
/// enabled the compiler vectorises them at full width (16 lanes on AVX-512).
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(simd: $crate::cpu::Simd, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { generic($($arg),*) }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { generic($($arg),*) }

            match simd.isa() {
                // SAFETY: a `Simd` holding this Isa exists only if the CPU supports it.
                #[cfg(target_arch = "x86_64")]
                $crate::cpu::Isa::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::cpu::Isa::Avx2Fma => unsafe { avx2($($arg),*) },
                // NEON is part of the aarch64 baseline, so `generic` already uses it there.
                _ => generic($($arg),*),
            }
        }
    };
}
pub(crate) use simd_fn;
