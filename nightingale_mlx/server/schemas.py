"""The request body of `POST /v1/audio/speech`: OpenAI's fields, then Chatterbox's own."""

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_INPUT_CHARS = 4096  # OpenAI's limit
# OpenAI's speech models and ours: any of them is this server's one model.
MODEL_IDS = ("chatterbox", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")


class VoiceRef(BaseModel):
    """OpenAI's custom-voice form, `{"id": "..."}`."""

    id: str


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str = "chatterbox"
    input: str = Field(max_length=MAX_INPUT_CHARS)
    voice: Union[str, VoiceRef, None] = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: Optional[str] = None  # accepted for compatibility; Chatterbox takes no instructions
    # Chatterbox's own controls (the `nightingale speak` flags).
    language: str = "en"
    seed: Optional[int] = Field(None, ge=0, lt=2**64)
    exaggeration: float = Field(0.5, ge=0, le=10)
    cfg_weight: Optional[float] = Field(None, ge=0)
    temperature: Optional[float] = Field(None, ge=0)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    min_p: Optional[float] = Field(None, ge=0, lt=1)
    repetition_penalty: Optional[float] = Field(None, gt=0)
    max_new_tokens: Optional[int] = Field(None, ge=1, le=4096)  # speech tokens per sentence, 25 per second

    def voice_name(self) -> Optional[str]:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice

    def sampling(self) -> dict:
        return {k: getattr(self, k) for k in ("seed", "exaggeration", "cfg_weight", "temperature", "top_p", "min_p",
                                              "repetition_penalty", "max_new_tokens")}
