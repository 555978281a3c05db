"""Audio DSP written once and shared: STFT/iSTFT, mels, resampling, wav I/O."""
