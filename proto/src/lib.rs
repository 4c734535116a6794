//! poolplane's protobuf API: the generated `poolplane.v1` messages, clients and
//! servers, and the encoded descriptor set that server reflection serves.

/// Package `poolplane.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("poolplane.v1");
}

/// The encoded `FileDescriptorSet` of every file of `poolplane.v1` (with imports), for
/// `tonic_reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/poolplane_descriptor.bin"));

/// The codec of every poolplane service and client: prost's, with buffers that
/// start at 1 KiB instead of tonic's 8 KiB and grow as a message needs. A stream
/// holds its encode buffer for its whole life (10,000 WatchPoolStats streams held
/// 80 MiB of them), and every unary call allocated two.
#[derive(Debug)]
pub struct LeanCodec<T, U>(std::marker::PhantomData<fn() -> (T, U)>);

/// Where a codec buffer starts.
const CODEC_BUFFER: usize = 1024;
/// tonic's: how much an encoder writes before it yields.
const CODEC_YIELD_THRESHOLD: usize = 32 * 1024;

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(lean_buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(lean_buffers())
    }
}

fn lean_buffers() -> tonic::codec::BufferSettings {
    tonic::codec::BufferSettings::new(CODEC_BUFFER, CODEC_YIELD_THRESHOLD)
}
