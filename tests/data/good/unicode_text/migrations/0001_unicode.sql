-- Ünïcödé: 日本語
CREATE TABLE café (naïve text DEFAULT 'ñandú; 日本');
