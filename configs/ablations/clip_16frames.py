# Ablation: longer clips, 16 frames per clip and per temporal window (released: 8).
# Grid layers keep their [ts, xs]: [4, 1] now means 4 windows of 4 frames (released: 4 windows of 2).
_base_ = ['../s1024.effn-f32.py']

model = dict(lats_per_vid=16)
data = dict(num_frames_per_video=16)
