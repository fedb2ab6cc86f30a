"""What every app shares: run options, the embedded photographs and image folders, 8-bit image metrics,
and the Trainer / Tester base classes that keep checkpoints, logs and results the same across apps, distillation
teachers (--kd_teacher) and starting from a trained model (--load_weights)."""
